"""EventProxy follows its log: a route added or removed by another writer (a second hub on the
same etcd log, a repair) becomes visible to it and to its data plane, and get_all_routes
reflects it. Two EventProxy instances on one etcd log, and on one named in-memory log; a file
log has one writer at a time by design (its lock), so there the second writer cannot exist."""

from __future__ import annotations

import asyncio
import itertools
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from eventproxy import EventProxy, RouteAdded, open_log
from eventproxy.log import forget_memory_logs
from support import free_port
from support.etcd import Etcd, require_etcd, running_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services]
_names = itertools.count()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # EventProxy lives in JupyterHub's asyncio loop


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


@pytest.fixture(params=["etcd", "memory"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "memory":
        yield f"memory://follow-{next(_names)}"
        forget_memory_logs()
        return
    etcd = request.getfixturevalue("etcd")
    yield f"etcd://127.0.0.1:{etcd.client_port}/follow{next(_names)}"


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


def make_proxy(log_url: str) -> EventProxy:
    return EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url)


async def eventually(check, what: str, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll a real condition (the proxy's own answer) until it holds, failing after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds}s waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_second_writers_routes_become_visible(shared_url: str, backend: str) -> None:
    a, b = make_proxy(shared_url), make_proxy(shared_url)
    await a.start()
    await b.start()
    try:
        async with httpx.AsyncClient(base_url=a.public_url) as via_a:

            async def a_has(spec: str, present: bool = True) -> bool:
                return (spec in await a.get_all_routes()) == present

            async def a_routes(path: str, status: int) -> bool:
                return (await via_a.get(path)).status_code == status

            await b.add_route("/user/bob/", backend, {"user": "bob"})
            await eventually(lambda: a_has("/user/bob/"), "A to see B's route")
            assert (await a.get_all_routes())["/user/bob/"]["data"] == {"user": "bob"}
            await eventually(lambda: a_routes("/user/bob/lab", 200), "A's plane to route it")

            await a.add_route("/user/alice/", backend, {"user": "alice"})
            await eventually(
                lambda: _has(b, "/user/alice/"), "B to see A's route"
            )  # and the writer's own route is there at once
            assert "/user/alice/" in await a.get_all_routes()

            await b.delete_route("/user/bob/")
            await eventually(lambda: a_has("/user/bob/", False), "A to see B's removal")
            await eventually(lambda: a_routes("/user/bob/lab", 404), "A's plane to drop it")
            # both agree and the log has every event once, in order
            assert await a.get_all_routes() == await b.get_all_routes()
        async with await open_log(shared_url, readonly=True) as log:
            events = [(r.seq, type(r.event).__name__) for r in await log.read()]
        assert events == [(1, "RouteAdded"), (2, "RouteAdded"), (3, "RouteRemoved")]
    finally:
        await a.stop()
        await b.stop()


async def _has(proxy: EventProxy, spec: str) -> bool:
    return spec in await proxy.get_all_routes()


async def test_a_repair_written_directly_to_the_log_is_followed(
    shared_url: str, backend: str
) -> None:
    proxy = make_proxy(shared_url)
    await proxy.start()
    try:
        async with await open_log(shared_url) as log:
            await log.append([RouteAdded("/user/repaired/", backend, {})], actor="repair")
        await eventually(lambda: _has(proxy, "/user/repaired/"), "the proxy to follow")
        # its own writes still number after the other writer's
        await proxy.add_route("/user/next/", backend, {})
        async with await open_log(shared_url, readonly=True) as log:
            assert [r.event.routespec for r in await log.read()] == [
                "/user/repaired/",
                "/user/next/",
            ]
    finally:
        await proxy.stop()


async def test_a_wiped_etcd_is_reported_and_then_followed(
    etcd: Etcd, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"etcd://127.0.0.1:{etcd.client_port}/wiped"
    proxy = make_proxy(url)
    await proxy.start()
    try:
        await proxy.add_route("/user/a/", backend, {})
        await proxy.add_route("/user/b/", backend, {})

        def wipe() -> None:
            etcd.stop()
            shutil.rmtree(etcd.data_dir)
            etcd.start()

        await asyncio.to_thread(wipe)

        async def reset_reported() -> bool:
            return any("wiped or restored" in r.getMessage() for r in caplog.records)

        await eventually(reset_reported, "the reset to be logged", seconds=20)
        error = next(r for r in caplog.records if "wiped or restored" in r.getMessage())
        assert error.levelname == "ERROR"
        await eventually(lambda: _empty(proxy), "the proxy to show what the log holds now")
        # the hub's check_routes adds routes back: they land in the new history
        await proxy.add_route("/user/a/", backend, {})
        assert list(await proxy.get_all_routes()) == ["/user/a/"]
    finally:
        await proxy.stop()


async def _empty(proxy: EventProxy) -> bool:
    return not await proxy.get_all_routes()
