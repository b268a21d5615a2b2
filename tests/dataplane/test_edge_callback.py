"""What the asyncio callback edge does beyond the shared tier (asyncio only: stock loop, uvloop).

The callback edge keeps reading a client whose request is at the backend (it pauses only once
bytes it did not ask for arrive), so a client that resets its connection while it waits is
noticed at once and the backend connection is given up, not held until the answer comes.
"""

from __future__ import annotations

import importlib.util
import socket
import struct

import anyio
import pytest

from support.backends import LOOPBACK, HTTPBackend, make_table, running_proxy

pytestmark = pytest.mark.anyio

LOOPS = [pytest.param(("asyncio", {"debug": False}), id="asyncio")]
if importlib.util.find_spec("uvloop") is not None:
    LOOPS.append(pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"))


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """asyncio only: trio runs the anyio edge."""
    return request.param


async def test_a_client_reset_while_its_request_waits_frees_the_backend_at_once() -> None:
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            pool = proxy.plane.pool
            client = socket.create_connection((LOOPBACK, proxy.port))
            try:
                client.sendall(b"GET /slow/30 HTTP/1.1\r\nHost: x\r\n\r\n")
                with anyio.fail_after(10):
                    while pool.checked_out == 0:  # noqa: ASYNC110 - polls a counter
                        await anyio.sleep(0.01)
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            finally:
                client.close()  # with SO_LINGER 0: a reset
            with anyio.fail_after(5):  # the backend answers only after 30 s
                while pool.checked_out:  # noqa: ASYNC110
                    await anyio.sleep(0.01)
            assert pool.idle_count == 0  # closed, not pooled: its answer never came
        tg.cancel_scope.cancel()
