"""An append cancelled while its batch is being written leaves a consistent log.

Found by the soak benchmark (issue 13): a caller cancelled with asyncio's own cancellation
(``asyncio.wait_for`` timing out) while ``append`` waited for the write thread got the batch on
disk but not in memory; the next append reused its seqs, and every reader then refused the file
("sequence gap"). Now a batch interrupted while it is persisted is "in doubt": the next writer
waits for the write thread and installs the batch if it landed, so its seqs are never reused.
"""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import anyio
import pytest

from eventproxy import RouteAdded
from eventproxy.log import FileRouteLog

pytestmark = pytest.mark.anyio


async def test_an_append_cancelled_mid_write_does_not_corrupt_the_log(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    log = await FileRouteLog.open(path)
    writing, release = threading.Event(), threading.Event()
    append_sync = log._append_sync

    def slow_append(fd: int, frame: bytes) -> None:
        writing.set()
        release.wait(10)  # the write thread is busy while the caller gets cancelled
        append_sync(fd, frame)

    log._append_sync = slow_append  # type: ignore[method-assign]
    async with anyio.create_task_group() as tg:
        tg.start_soon(log.append, [RouteAdded("/user/a/", "http://127.0.0.1:1")])
        await anyio.to_thread.run_sync(writing.wait, 10)
        tg.cancel_scope.cancel()  # the caller gives up while the batch is being written
        release.set()
    log._append_sync = append_sync  # type: ignore[method-assign]
    assert await log.append([RouteAdded("/user/b/", "http://127.0.0.1:2")]) == [2]
    await log.aclose()
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert [r.seq for r in await reader.read()] == [1, 2]
        assert set(await reader.load_table()) == {"/user/a/", "/user/b/"}


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_natively_cancelled_append_does_not_corrupt_the_log(tmp_path: Path) -> None:
    """The same with asyncio's own cancellation (``asyncio.wait_for`` timing out a caller)."""
    import asyncio

    path = tmp_path / "routes.log"
    log = await FileRouteLog.open(path)
    writing, release = threading.Event(), threading.Event()
    append_sync = log._append_sync

    def slow_append(fd: int, frame: bytes) -> None:
        writing.set()
        release.wait(10)
        append_sync(fd, frame)

    log._append_sync = slow_append  # type: ignore[method-assign]
    task = asyncio.ensure_future(log.append([RouteAdded("/user/a/", "http://127.0.0.1:1")]))
    await anyio.to_thread.run_sync(writing.wait, 10)
    task.cancel()
    await asyncio.sleep(0.05)
    release.set()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    log._append_sync = append_sync  # type: ignore[method-assign]
    seqs = await log.append([RouteAdded("/user/b/", "http://127.0.0.1:2")])
    await log.aclose()
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert [r.seq for r in await reader.read()] == [*range(1, seqs[0]), *seqs]
        assert "/user/b/" in await reader.load_table()
