"""The backend connection pool is bounded and lets go of what nobody uses (issue 13).

Real sockets on 127.0.0.1, on both I/O edges (asyncio protocols / anyio streams) and on asyncio
and trio: a route removed closes its pooled connections; a backend closing an idle connection
is noticed and the socket released (no CLOSE_WAIT); the idle timeout and the caps per backend
and in total hold.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import anyio
import pytest

from eventproxy_dataplane import DataPlane, ProxySettings, RouterSpec, ServerSpec, ServiceSpec
from eventproxy_dataplane._backend import BackendConnection, BackendPool
from eventproxy_dataplane._http import EndOfMessage
from support.backends import (
    PROXY_IO_EDGE,
    PROXY_PARSER,
    HTTPBackend,
    HTTPClient,
    make_table,
    running_proxy,
)
from support.procnet import states_to

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]

LIMIT = 10.0  # seconds any wait below may take at most


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for ``condition`` (checked after each short sleep), failing after LIMIT seconds."""
    with anyio.fail_after(LIMIT):
        while not condition():  # noqa: ASYNC110 - polls sockets and counters
            await anyio.sleep(0.01)
    assert condition(), what


def route(name: str, prefix: str, url: str) -> tuple[RouterSpec, ServiceSpec]:
    return (
        RouterSpec(name=name, rule=f"PathPrefix(`{prefix}`)", service=name),
        ServiceSpec(name=name, servers=(ServerSpec(url),)),
    )


async def get(port: int, path: str) -> int:
    async with await HTTPClient.connect(port) as client:
        return (await client.request("GET", path)).status


async def get_together(port: int, path: str, n: int) -> None:
    """``n`` requests at the same time, on ``n`` client connections (so ``n`` backend ones)."""
    statuses: list[int] = []

    async def one() -> None:
        statuses.append(await get(port, path))

    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(one)
    assert statuses == [200] * n


def proxy_side(backend: HTTPBackend) -> dict[str, int]:
    """States of this process's sockets to ``backend`` (the proxy's end of each connection)."""
    return dict(states_to([backend.port], pid=os.getpid()))


async def test_removing_the_last_route_to_a_server_closes_its_pooled_connections() -> None:
    a, b = HTTPBackend(name="a"), HTTPBackend(name="b")
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve)
        await tg.start(b.serve)
        table = make_table(
            {
                "r1": ("PathPrefix(`/one/`)", [a.url]),
                "r2": ("PathPrefix(`/two/`)", [a.url]),
                "r3": ("PathPrefix(`/three/`)", [b.url]),
            }
        )
        async with running_proxy(table) as proxy:
            plane: DataPlane = proxy.plane
            assert await get(proxy.port, "/one/") == 200
            assert await get(proxy.port, "/three/") == 200
            assert plane.pool.idle_urls() == {a.url: 1, b.url: 1}
            plane.apply(removals=["r1"])  # r2 still sends to a: its connection stays
            assert plane.pool.idle_urls() == {a.url: 1, b.url: 1}
            plane.apply(removals=["r2"])
            assert plane.pool.idle_urls() == {b.url: 1}
            await until(lambda: a.open_connections == 0, "a's pooled connection closed")
            assert plane.pool.closed["retired"] == 1
            # replacing r3's server retires b the same way
            plane.apply([route("r3", "/three/", a.url)])
            await until(lambda: b.open_connections == 0, "b's pooled connection closed")
            assert plane.pool.idle_count == 0
            assert "CLOSE_WAIT" not in proxy_side(a) and "CLOSE_WAIT" not in proxy_side(b)
        tg.cancel_scope.cancel()


async def test_a_connection_in_use_when_its_route_goes_is_closed_not_pooled() -> None:
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            plane = proxy.plane
            async with await HTTPClient.connect(proxy.port) as client:
                await client.send_request("GET", "/slow/0.3")
                await until(lambda: backend.open_connections == 1, "request reached backend")
                plane.apply(removals=["r"])
                assert (await client.read_reply()).status == 200  # in flight: finished
            await until(lambda: backend.open_connections == 0, "closed when it came back")
            assert plane.pool.idle_count == 0
        tg.cancel_scope.cancel()


def _edge_settings() -> ProxySettings:
    """Default settings on the I/O edge and parser this test runs with (for a bare pool)."""
    return dataclasses.replace(ProxySettings(), io_edge=PROXY_IO_EDGE[0], parser=PROXY_PARSER[0])


async def _clean_get(conn: BackendConnection) -> None:
    """One ``GET /`` on ``conn``, its response read whole: the exchange a pool may reuse."""
    conn.start(b"GET")
    await conn.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(LIMIT):
        while not isinstance(await conn.next_event(), EndOfMessage):
            pass
    conn.response_done = True


async def test_a_server_retired_while_a_connection_to_it_opens_is_not_pooled() -> None:
    """The route goes while the proxy is still connecting to its server: that connection too
    is closed when it comes back. The pool used to count a connection in use only once
    connected, and pooled this one (the test above failed so, now and then, on a slow run)."""
    settings = _edge_settings()
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        pool = BackendPool(settings)
        got: list[BackendConnection] = []
        calling = anyio.Event()

        async def acquire() -> None:
            calling.set()  # we run again only once acquire() waits (in its connect)
            got.append((await pool.acquire(backend.url))[0])

        try:
            tg.start_soon(acquire)
            await calling.wait()
            assert not got, "the connect finished at once: the race is not exercised"
            pool.retire([backend.url])
            await until(lambda: bool(got), "connected")
            assert pool.checked_out == 1
            await _clean_get(got[0])  # were its server not retired, it would be pooled
            await pool.release(got[0])
            assert pool.idle_count == 0 and pool.checked_out == 0
            await until(lambda: backend.open_connections == 0, "closed when it came back")
        finally:  # nothing left open for a later test's garbage collection
            for conn in got:
                await anyio.aclose_forcefully(conn.stream)
            await pool.aclose()
        tg.cancel_scope.cancel()


async def _pooled(pool: BackendPool, url: str, n: int) -> None:
    """Open ``n`` connections to ``url`` at once, one clean GET on each, and pool them all."""
    conns = [(await pool.acquire(url))[0] for _ in range(n)]
    for conn in conns:
        await _clean_get(conn)
    for conn in conns:
        await pool.release(conn)
    assert pool.idle_count == n


@pytest.mark.parametrize("closing", ["aclose", "sweep"])
async def test_a_cancelled_close_still_closes_every_connection(closing: str) -> None:
    """The plane stops (its task group cancelled) while the pool closes its connections, at
    shutdown or in the sweep after a retire: every socket is still closed, none is left for the
    garbage collector (on trio the first close's checkpoint raised Cancelled and the rest were
    dropped open: a CI run reported 22 unclosed sockets in a later test)."""
    settings = _edge_settings()
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        pool = BackendPool(settings)
        try:
            await _pooled(pool, backend.url, 5)
            await until(lambda: backend.open_connections == 5, "five connections")
            if closing == "sweep":
                pool.retire([backend.url])  # closed at once, or handed to the next sweep
            with anyio.CancelScope() as scope:
                scope.cancel()
                await (pool.aclose() if closing == "aclose" else pool.sweep())
            await until(lambda: backend.open_connections == 0, "every connection closed")
        finally:
            await pool.aclose()
        tg.cancel_scope.cancel()


async def test_a_backend_closing_an_idle_connection_is_noticed_and_released() -> None:
    backend = HTTPBackend()
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            pool = proxy.plane.pool
            # /then-close: a 200 on a kept-alive connection, then the backend closes it
            assert await get(proxy.port, "/then-close") == 200
            await until(lambda: backend.open_connections == 0, "the backend closed")
            await until(lambda: pool.idle_count == 0, "the pool let it go")
            assert pool.closed["peer_closed"] == 1
            await until(lambda: "CLOSE_WAIT" not in proxy_side(backend), "no CLOSE_WAIT")
            assert proxy_side(backend).get("ESTABLISHED", 0) == 0
            assert await get(proxy.port, "/again") == 200  # and the route still works
        tg.cancel_scope.cancel()


async def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    backend = HTTPBackend()
    settings = ProxySettings(pool_idle_timeout=0.2)
    async with anyio.create_task_group() as tg:
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            await get_together(proxy.port, "/slow/0.2", 3)
            assert proxy.plane.pool.idle_count == 3
            await until(lambda: backend.open_connections == 0, "idle connections closed")
            assert proxy.plane.pool.idle_count == 0
            assert proxy.plane.pool.closed["timeout"] == 3
        tg.cancel_scope.cancel()


async def test_idle_connections_are_capped_per_backend_and_in_total() -> None:
    a, b = HTTPBackend(name="a"), HTTPBackend(name="b")
    settings = ProxySettings(pool_max_idle=2, pool_max_idle_total=3)
    async with anyio.create_task_group() as tg:
        await tg.start(a.serve)
        await tg.start(b.serve)
        table = make_table(
            {"a": ("PathPrefix(`/a/`)", [a.url]), "b": ("PathPrefix(`/b/`)", [b.url])}
        )
        async with running_proxy(table, settings) as proxy:
            pool = proxy.plane.pool
            await get_together(proxy.port, "/a/slow/0.3", 4)
            assert pool.idle_urls() == {a.url: 2}  # per backend: 2
            await until(lambda: a.open_connections == 2, "a's surplus closed")
            await get_together(proxy.port, "/b/slow/0.3", 2)
            assert pool.idle_urls() == {a.url: 1, b.url: 2}  # in total: 3, oldest closed
            await until(lambda: a.open_connections == 1, "the oldest closed")
            assert pool.closed["cap"] == 3
            assert pool.idle_count == 3
        tg.cancel_scope.cancel()
