"""``data_plane = "external"``: the nodes are asked for a change's seq while it is being
appended (one round trip fewer per add), and that early answer is used only when the append
got the seq it was asked for.

The node here is a scripted admin endpoint on 127.0.0.1: it answers ``/health?min_seq=N`` the
way a node does (at once when it has applied N, else when it does, else 504 at the timeout),
with an applied seq the test sets, and records every ``min_seq`` it was asked for.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from eventproxy import EventProxy, RouteAdded, VisibilityTimeoutError, open_log
from eventproxy.log import forget_memory_logs
from support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # EventProxy runs on JupyterHub's asyncio loop


class ScriptedNode:
    """A data-plane node's admin listener, reduced to ``/health`` with a scripted seq."""

    def __init__(self) -> None:
        self.applied = 0
        self.asked: list[int] = []
        self.answered: list[int] = []  # the min_seq of each long-poll answered 200
        self._changed = asyncio.Condition()

    async def apply(self, seq: int) -> None:
        async with self._changed:
            self.applied = seq
            self._changed.notify_all()

    async def wait_asked(self, seq: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: seq in self.asked)

    async def wait_answered(self, seq: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: seq in self.answered)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b" ", 2)[1].decode()
                query = parse_qs(urlsplit(target).query)
                status, seq = 200, None
                if "min_seq" in query:
                    seq = int(query["min_seq"][0])
                    timeout = float(query["timeout"][0])
                    async with self._changed:
                        self.asked.append(seq)
                        self._changed.notify_all()
                        try:
                            await asyncio.wait_for(
                                self._changed.wait_for(lambda n=seq: self.applied >= n), timeout
                            )
                        except TimeoutError:
                            status = 504
                body = json.dumps({"applied_seq": self.applied}).encode()
                writer.write(
                    b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (status, len(body), body)
                )
                await writer.drain()
                if seq is not None and status == 200:
                    async with self._changed:
                        self.answered.append(seq)
                        self._changed.notify_all()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.close()
            await server.wait_closed()


@asynccontextmanager
async def external_proxy(node: ScriptedNode, name: str, **kwargs: Any) -> AsyncIterator[EventProxy]:
    async with node.serving() as endpoint:
        proxy = EventProxy(
            public_url=f"http://127.0.0.1:{free_port()}/",
            log_url=f"memory://{name}",
            data_plane="external",
            data_plane_endpoints=[endpoint],
            **kwargs,
        )
        await proxy.start()
        try:
            yield proxy
        finally:
            await proxy.stop()
            forget_memory_logs()


async def test_the_nodes_are_asked_once_per_add_for_the_seq_it_gets() -> None:
    node = ScriptedNode()
    async with external_proxy(node, "early-one") as proxy:
        asked_before = len(node.asked)
        add = asyncio.ensure_future(proxy.add_route("/user/a/", "http://127.0.0.1:9", {}))
        await node.wait_asked(1)
        assert not add.done()  # the node has not applied seq 1: the call waits for it
        await node.apply(1)
        await add
        assert node.asked[asked_before:] == [1]
        await node.apply(2)  # the node already has the next change: the call returns at once
        await proxy.delete_route("/user/a/")
        assert node.asked[asked_before:] == [1, 2]


async def test_an_early_answer_for_another_writers_seq_does_not_count() -> None:
    """Another writer appends between the prediction and our append: the node has applied the
    predicted seq (the other writer's change), so the early poll says 200 -- for the wrong
    change. The call must then wait for the seq it really got."""
    node = ScriptedNode()
    async with external_proxy(node, "early-race") as proxy:
        other = await open_log("memory://early-race")
        log = proxy._log  # the proxy's own log object
        assert log is not None
        own_append = log.append

        async def append_after_the_other_writer(events: Any, **kwargs: Any) -> list[int]:
            await node.wait_asked(1)  # the early poll for the predicted seq is waiting
            (seq,) = await other.append([RouteAdded("/user/other/", "http://127.0.0.1:9", {})])
            await node.apply(seq)  # the node has the other writer's change, not ours yet
            await node.wait_answered(seq)  # the early poll got its 200, for the wrong change
            return await own_append(events, **kwargs)

        log.append = append_after_the_other_writer  # type: ignore[method-assign]
        try:
            add = asyncio.ensure_future(proxy.add_route("/user/mine/", "http://127.0.0.1:9", {}))
            asked = asyncio.ensure_future(node.wait_asked(2))  # ours is seq 2, predicted 1
            await asyncio.wait({add, asked}, return_when=asyncio.FIRST_COMPLETED)
            assert not add.done(), "add_route returned on the other writer's seq"
            await node.apply(2)
            await add
        finally:
            log.append = own_append  # type: ignore[method-assign]
            await other.aclose()
        assert "/user/mine/" in await proxy.get_all_routes()


async def test_a_node_that_never_applies_the_change_is_named() -> None:
    node = ScriptedNode()
    async with external_proxy(node, "early-late", visibility_timeout=1.0) as proxy:
        with pytest.raises(VisibilityTimeoutError, match="had applied seq 0, not 1"):
            await proxy.add_route("/user/a/", "http://127.0.0.1:9", {})
