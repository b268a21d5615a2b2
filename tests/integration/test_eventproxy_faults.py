"""EventProxy when something fails: each caller learns what became of its own change.

Not written (the log is unchanged) is the append's error; written but not visible is
:class:`DurableNotVisibleError`; ``stop()`` finishes queued changes or fails them explicitly and
closes the log only once nothing writes to it. Faults are injected at one precise point each
(an fsync that blocks until released, a read-back that fails once, a route the data plane
refuses); everything else is real: a file log, sockets, HTTP through the data plane.

EventProxy lives in JupyterHub's asyncio loop, so these tests run on asyncio only.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventproxy import (
    DurableNotVisibleError,
    EventProxy,
    EventProxyError,
    InvalidRouteDataError,
    LogUnavailableError,
    VisibilityTimeoutError,
    open_log,
    projection,
)
from eventproxy.traefik import name_for
from eventproxy_dataplane import ConfigProblem, DataPlaneError
from support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nbackend")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    server.close()


@pytest.fixture
async def proxy(tmp_path: Path) -> AsyncIterator[EventProxy]:
    p = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url(tmp_path))
    await p.start()
    yield p
    await p.stop()


def log_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'routes.log'}"


async def logged_routes(tmp_path: Path) -> list[str]:
    async with await open_log(log_url(tmp_path), readonly=True) as log:
        return sorted(await log.load_table())


async def status(proxy: EventProxy, path: str) -> int:
    async with httpx.AsyncClient(base_url=proxy.public_url) as client:
        return (await client.get(path)).status_code


class BlockedFsync:
    """``os.fsync`` waits until released once armed: a disk that does not answer."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()
        real = os.fsync

        def fsync(fd: int) -> None:
            if self.armed:
                self.entered.set()
                self.release.wait(30)
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)

    async def wait_entered(self) -> None:
        await asyncio.to_thread(self.entered.wait, 10)
        assert self.entered.is_set()


@pytest.fixture
def blocked_fsync(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockedFsync]:
    blocked = BlockedFsync(monkeypatch)
    yield blocked
    blocked.release.set()


# -- stop() -------------------------------------------------------------------------------------
async def test_stop_finishes_the_batch_being_written_and_fails_the_queued_ones_explicitly(
    tmp_path: Path, backend: str, blocked_fsync: BlockedFsync
) -> None:
    proxy = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url(tmp_path))
    await proxy.start()
    blocked_fsync.armed = True
    writing = asyncio.create_task(proxy.add_route("/user/a/", backend, {}))
    await blocked_fsync.wait_entered()  # /user/a/ is being appended (inside fsync)
    queued = asyncio.create_task(proxy.add_route("/user/b/", backend, {}))
    await asyncio.sleep(0)  # /user/b/ waits for the next group commit
    proxy.visibility_timeout = 0.2  # stop() gives up on waiting much sooner than the callers
    stopping = asyncio.create_task(proxy.stop())

    # the change never written is failed explicitly, without waiting for the disk
    with pytest.raises(EventProxyError, match=r"stopped before the route change for '/user/b/'"):
        await asyncio.wait_for(queued, 10)
    # new changes are refused while stopping
    with pytest.raises(EventProxyError, match="is stopping"):
        await proxy.add_route("/user/c/", backend, {})
    # the log is not closed under the append: stop() waits for it, and its caller succeeds
    assert not stopping.done()
    blocked_fsync.release.set()
    await asyncio.wait_for(stopping, 10)
    await asyncio.wait_for(writing, 1)  # no exception: durable and was visible
    assert await logged_routes(tmp_path) == ["/user/a/"]


async def test_stop_abandons_a_write_that_never_ends_and_says_so(
    tmp_path: Path, backend: str, blocked_fsync: BlockedFsync
) -> None:
    proxy = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url(tmp_path))
    await proxy.start()
    blocked_fsync.armed = True
    writing = asyncio.create_task(proxy.add_route("/user/a/", backend, {}))
    await blocked_fsync.wait_entered()
    proxy.visibility_timeout = 0.1
    stopping = asyncio.create_task(proxy.stop())
    with pytest.raises(VisibilityTimeoutError, match=r"'/user/a/' .* may or may not be in"):
        await asyncio.wait_for(writing, 10)
    blocked_fsync.release.set()  # the worker thread's fsync returns; the log closes after it
    await asyncio.wait_for(stopping, 10)
    assert proxy._flush_task is None


async def test_stop_raises_when_the_flush_itself_crashed(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url(tmp_path))
    await proxy.start()

    async def broken_write(batch: Any) -> None:
        raise RuntimeError("a bug in the flush")

    monkeypatch.setattr(proxy, "_write", broken_write)
    with pytest.raises(RuntimeError, match="a bug in the flush"):  # its caller is told
        await proxy.add_route("/user/a/", backend, {})
    with pytest.raises(EventProxyError, match="a bug in the flush"):  # and stop() says so
        await proxy.stop()
    assert proxy._log is None  # closed all the same


async def test_stop_with_nothing_queued_closes_the_log(tmp_path: Path, backend: str) -> None:
    proxy = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url(tmp_path))
    await proxy.start()
    await proxy.add_route("/user/a/", backend, {})
    await proxy.stop()
    async with await open_log(log_url(tmp_path)) as log:  # the writer lock was released
        assert sorted(await log.load_table()) == ["/user/a/"]


# -- durable but not visible -------------------------------------------------------------------
async def test_a_failed_read_back_is_durable_not_visible_and_catches_up(
    tmp_path: Path, proxy: EventProxy, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = proxy._log
    assert log is not None
    real_read = log.read

    async def read_fails_once(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(log, "read", real_read)
        raise LogUnavailableError("route log: refresh: Input/output error")

    monkeypatch.setattr(log, "read", read_fails_once)
    # the writer reads its batch back when the log does not hand it over (``appended`` is None:
    # another writer's records came first, or a backend that does not keep its batch)
    monkeypatch.setattr(log, "appended", lambda seqs: None)
    with pytest.raises(DurableNotVisibleError, match=r"'/user/a/' is durable \(at seq 1") as err:
        await proxy.add_route("/user/a/", backend, {})
    assert (err.value.routespec, err.value.seq) == ("/user/a/", 1)
    assert isinstance(err.value.__cause__, LogUnavailableError)
    assert await logged_routes(tmp_path) == ["/user/a/"]  # the log kept it
    await proxy.add_route("/user/b/", backend, {})  # the next change catches up with both
    assert await status(proxy, "/user/a/x") == 200
    assert await status(proxy, "/user/b/x") == 200
    assert sorted(await proxy.get_all_routes()) == ["/user/a/", "/user/b/"]


async def test_a_route_the_plane_refuses_fails_only_its_caller(
    tmp_path: Path, proxy: EventProxy, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plane = proxy._plane
    assert plane is not None
    real_apply = plane.apply
    bad_router = name_for("/user/bad/")

    def refuse_bad(upserts: Any, removals: Any) -> list[ConfigProblem]:
        """The data plane refuses /user/bad/ (and so drops any older version of it)."""
        kept = [(r, s) for r, s in upserts if r.name != bad_router]
        dropped = [bad_router] if len(kept) < len(upserts) else []
        problems = real_apply(kept, [*removals, *dropped])
        return [*problems, *(ConfigProblem(f"http.routers.{n}.rule", "no room") for n in dropped)]

    await proxy.add_route("/user/bad/", backend, {"v": 1})  # served before the plane refuses
    assert await status(proxy, "/user/bad/x") == 200
    monkeypatch.setattr(plane, "apply", refuse_bad)
    good, bad = await asyncio.gather(
        proxy.add_route("/user/good/", backend, {}),
        proxy.add_route("/user/bad/", backend, {"v": 2}),  # one batch with /user/good/
        return_exceptions=True,
    )
    assert good is None
    assert isinstance(bad, DurableNotVisibleError), bad
    assert f"'/user/bad/' -> '{backend}' is in the log" in str(bad)
    assert "data plane refused it: no room" in str(bad) and bad.routespec == "/user/bad/"
    assert await logged_routes(tmp_path) == ["/user/bad/", "/user/good/"]  # the log is the truth
    # the older version of the refused route is not served either: the log no longer has it
    assert await status(proxy, "/user/bad/x") == 404
    assert await status(proxy, "/user/good/x") == 200
    # once the plane takes it, adding the very same route again makes it visible
    monkeypatch.setattr(plane, "apply", real_apply)
    await proxy.add_route("/user/bad/", backend, {"v": 2})
    assert await status(proxy, "/user/bad/x") == 200


async def test_an_unstorable_route_fails_alone_not_its_batch(
    tmp_path: Path, proxy: EventProxy, backend: str
) -> None:
    results = await asyncio.gather(
        proxy.add_route("/user/a/", backend, {}),
        proxy.add_route("/user/bad/", backend, {"note": "caf\udce9"}),
        proxy.add_route("/user/c/", backend, {}),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], InvalidRouteDataError)
    assert "'/user/bad/' cannot be stored" in str(results[1])
    assert await logged_routes(tmp_path) == ["/user/a/", "/user/c/"]


async def test_a_route_the_projection_cannot_turn_into_a_router_is_durable_not_visible(
    tmp_path: Path, proxy: EventProxy, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_entry = projection.plane_entry

    def refuse_new(entry: Any) -> Any:  # add_route's own check uses its own reference
        if entry.routespec == "/user/new/":
            raise DataPlaneError("no router for this one")
        return real_entry(entry)

    monkeypatch.setattr(projection, "plane_entry", refuse_new)
    with pytest.raises(DurableNotVisibleError, match="refused it: no router for this one"):
        await proxy.add_route("/user/new/", backend, {})
    assert await logged_routes(tmp_path) == ["/user/new/"]
    assert await status(proxy, "/user/new/x") == 404
    monkeypatch.setattr(projection, "plane_entry", real_entry)
    await proxy.add_route("/user/new/", backend, {})  # the same route again: now served
    assert await status(proxy, "/user/new/x") == 200
