"""On stock asyncio (JupyterHub's loop), a closed connection's transport is freed by its reference
count, not left as a cycle for the garbage collector (issue 13: under load the in-process plane
carried thousands of dead transports between full collections).

Real sockets on 127.0.0.1 through the asyncio edge: client connections accepted and closed,
backend connections opened and closed (the backend closes each after one response). The
collector is off meanwhile, so any transport still alive after the connections are gone is
held by a cycle.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest

from eventproxy_dataplane import DataPlane, ProxySettings
from eventproxy_dataplane._proxy_fast import _StreamProtocol
from support import backends
from support.backends import HTTPBackend, HTTPClient, make_table, running_proxy

pytestmark = pytest.mark.anyio

CONNECTIONS = 40


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, bool]]:
    return ("asyncio", {"use_uvloop": False})  # the stock loop: uvloop has no such cycle


@pytest.fixture(params=backends.PARSERS)
def asyncio_edge(request: pytest.FixtureRequest) -> Iterator[None]:
    previous = backends.PROXY_IO_EDGE[0], backends.PROXY_PARSER[0]
    backends.PROXY_IO_EDGE[0], backends.PROXY_PARSER[0] = "auto", request.param
    yield
    backends.PROXY_IO_EDGE[0], backends.PROXY_PARSER[0] = previous


@pytest.fixture
def proxy_transports(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[asyncio.BaseTransport]]:
    """Weak references to every transport the proxy's protocols are given from now on (the
    test's own client and backend are anyio streams: not these)."""
    seen: list[weakref.ref[asyncio.BaseTransport]] = []
    made = _StreamProtocol.connection_made

    def recording(self: _StreamProtocol, transport: asyncio.BaseTransport) -> None:
        seen.append(weakref.ref(transport))
        made(self, transport)

    monkeypatch.setattr(_StreamProtocol, "connection_made", recording)
    return seen


def open_connections(plane: DataPlane) -> int:
    """The plane's open client connections, from its /metrics text."""
    for line in plane.metrics_text().splitlines():
        if line.startswith("eventproxy_dataplane_open_connections "):
            return int(line.split()[1])
    raise AssertionError("no eventproxy_dataplane_open_connections in the metrics")


@pytest.mark.usefixtures("asyncio_edge")
async def test_closed_connections_leave_no_transport_cycles(
    proxy_transports: list[weakref.ref[asyncio.BaseTransport]],
) -> None:
    assert type(asyncio.get_running_loop()).__module__.startswith("asyncio")
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, ProxySettings()) as proxy:
            gc.collect()
            gc.disable()
            try:
                proxy_transports.clear()
                for _ in range(CONNECTIONS):
                    async with await HTTPClient.connect(proxy.port) as client:
                        # the backend closes after answering: its connection goes too
                        reply = await client.request("GET", "/then-close")
                        assert reply.status == 200
                with anyio.fail_after(10):  # polls counters
                    while open_connections(proxy.plane) or backend.open_connections:  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                # connection_lost runs in a loop callback after the close
                for _ in range(3):
                    await anyio.lowlevel.checkpoint()
                left = [t for t in (ref() for ref in proxy_transports) if t is not None]
                closed = sum(1 for t in left if t.is_closing())
            finally:
                gc.enable()
            # 2 x CONNECTIONS transports were closed (client and backend side of each)
            assert len(proxy_transports) >= 2 * CONNECTIONS
            assert closed == 0, f"{closed} closed transports still alive without a collection"
        tg.cancel_scope.cancel()
