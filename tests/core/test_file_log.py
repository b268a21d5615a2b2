"""File log specifics: torn tails, corruption with offsets, the writer lock, readers, rollback."""

from __future__ import annotations

import builtins
import errno
import logging
import os
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventproxy import (
    CorruptLogError,
    LogLockedError,
    LogUnavailableError,
    RouteAdded,
    RouteRemoved,
    open_log,
)
from eventproxy.log import FileRouteLog
from eventproxy.log._framing import FILE_MAGIC, FRAME_HEADER_SIZE

pytestmark = pytest.mark.anyio


def added(i: int) -> RouteAdded:
    return RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{10000 + i}", {"i": i})


async def write_log(path: Path, batches: int) -> list[int]:
    """Append ``batches`` batches of two events; return the file size after each batch."""
    sizes = []
    async with await FileRouteLog.open(path) as log:
        for b in range(batches):
            await log.append([added(2 * b), RouteRemoved(f"/user/u{2 * b - 1}/")])
            sizes.append(path.stat().st_size)
    return sizes


async def test_torn_last_record_at_every_byte_offset_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "routes.log"
    sizes = await write_log(path, 3)
    full = path.read_bytes()
    last_start, last_end = sizes[-2], sizes[-1]
    work = tmp_path / "torn.log"
    caplog.set_level(logging.WARNING, logger="eventproxy.log")
    for cut in range(last_start, last_end):
        work.write_bytes(full[:cut])
        caplog.clear()
        async with await FileRouteLog.open(work) as log:
            assert await log.head() == 4, cut  # the two complete batches
            if cut > last_start:
                assert f"torn tail of {cut - last_start} bytes at byte offset {last_start}" in (
                    caplog.text
                )
            # the log is usable after recovery, and the next append lands right after
            assert await log.append([added(100)]) == [5]
        assert work.stat().st_size > last_start
        async with await FileRouteLog.open(work) as log:
            assert [r.seq for r in await log.read()] == [1, 2, 3, 4, 5]


async def test_trailing_zeros_are_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    sizes = await write_log(path, 2)
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)
    async with await FileRouteLog.open(path) as log:
        assert await log.head() == 4
    assert path.stat().st_size == sizes[-1]


async def test_a_flipped_byte_in_an_earlier_record_is_refused_with_its_offset(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routes.log"
    sizes = await write_log(path, 3)
    good = path.read_bytes()
    starts = [len(FILE_MAGIC), *sizes[:-1]]
    for frame_start, frame_end in zip(starts[:-1], sizes[:-1], strict=True):
        for offset in range(frame_start, frame_end, 7):
            bad = bytearray(good)
            bad[offset] ^= 0x40
            path.write_bytes(bytes(bad))
            with pytest.raises(CorruptLogError) as info:
                await FileRouteLog.open(path, readonly=True)
            assert info.value.offset == frame_start, offset
            assert f"byte offset {frame_start}" in str(info.value)
            with pytest.raises(CorruptLogError):
                await FileRouteLog.open(path)  # a writer refuses too, and changes nothing
            assert path.read_bytes() == bytes(bad)


async def test_a_corrupt_complete_last_record_is_refused_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    sizes = await write_log(path, 2)
    bad = bytearray(path.read_bytes())
    bad[-3] ^= 0xFF  # inside the last payload: acknowledged data, damaged
    path.write_bytes(bytes(bad))
    with pytest.raises(CorruptLogError, match=f"byte offset {sizes[0]}"):
        await FileRouteLog.open(path)


async def test_not_a_log_file(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    path.write_text("hello\n")
    with pytest.raises(CorruptLogError, match="not an eventproxy route log"):
        await FileRouteLog.open(path)


async def test_second_writer_fails_fast_naming_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    async with await FileRouteLog.open(path) as log:
        await log.append([added(1)])
        with anyio.fail_after(2), pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
            await open_log(f"file://{path}")
        # readers are welcome while the writer holds the lock
        async with await open_log(f"file://{path}", readonly=True) as reader:
            assert await reader.head() == 1
    async with await FileRouteLog.open(path) as log:  # released on close
        assert await log.head() == 1


async def test_reader_follows_a_writer_through_appends_and_compaction(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    from datetime import timedelta

    async with await FileRouteLog.open(path) as writer:
        await writer.append([added(1)])
        reader = await FileRouteLog.open(path, readonly=True, poll_interval=0.01)
        seen: list[int] = []
        async with reader:

            async def follow() -> None:
                async for record in reader.watch():
                    seen.append(record.seq)
                    if record.seq == 4:
                        return

            with anyio.fail_after(10):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(follow)
                    await writer.append([added(2)])
                    await writer.append([added(3), added(4)])
            assert seen == [1, 2, 3, 4]
            await writer.compact(retention=timedelta(0))
            await writer.append([RouteRemoved("/user/u1/")])
            assert await reader.head() == 5
            assert sorted(await reader.load_table()) == ["/user/u2/", "/user/u3/", "/user/u4/"]


async def test_reader_does_not_touch_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    await write_log(path, 2)
    with open(path, "ab") as f:
        f.write(b"\x00\x00\x00\x10partial")
    size = path.stat().st_size
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert await reader.head() == 4
    assert path.stat().st_size == size


async def test_failed_write_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "routes.log"
    async with await FileRouteLog.open(path) as log:
        await log.append([added(1)])
        size = path.stat().st_size
        real_write = os.write

        def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "write", half_then_enospc)
        with pytest.raises(LogUnavailableError, match="rolled back: No space left on device"):
            await log.append([added(2), added(3)])
        monkeypatch.setattr(os, "write", real_write)
        assert path.stat().st_size == size
        assert await log.head() == 1
        assert await log.append([added(2)]) == [2]
    async with await FileRouteLog.open(path) as log:
        assert [r.seq for r in await log.read()] == [1, 2]


async def test_missing_file_for_a_reader(tmp_path: Path) -> None:
    with pytest.raises(LogUnavailableError, match="does not exist"):
        await open_log(f"file://{tmp_path / 'nope.log'}", readonly=True)


async def test_unwritable_directory_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LogUnavailableError, match="route log"):
        await open_log(f"file://{blocker}/routes.log")


def test_frame_header_size_is_stable() -> None:
    assert FRAME_HEADER_SIZE == 12 and len(FILE_MAGIC) == 16


# -- faults after the point of no return, errors, and the event loop ----------------------------
def fail_reopen_after_replace(monkeypatch: pytest.MonkeyPatch, path: Path) -> list[str]:
    """Make ``os.open`` of ``path`` fail with EMFILE once a compaction renamed a file onto it.

    Returns a list that records "replaced" and "refused" as they happen.
    """
    real_open, real_replace = os.open, os.replace
    seen: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        real_replace(src, dst)
        if Path(dst) == path:
            seen.append("replaced")

    def open_(p: str | os.PathLike[str], flags: int, *args: int, **kwargs: object) -> int:
        if "replaced" in seen and Path(p) == path:
            seen.append("refused")
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return real_open(p, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "open", open_)
    return seen


async def test_compaction_that_cannot_reopen_its_file_breaks_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.log"
    log = await FileRouteLog.open(path)
    try:
        await log.append([added(1)])
        await log.append([added(2)])
        seen = fail_reopen_after_replace(monkeypatch, path)
        with pytest.raises(
            LogUnavailableError, match=r"routes\.log: compaction written, but reopening.*broken"
        ) as failed:
            await log.compact(retention=timedelta(0))
        assert seen == ["replaced", "refused"]
        assert isinstance(failed.value.__cause__, OSError)
        assert "Too many open files" in str(failed.value)
        monkeypatch.undo()  # the fd limit is gone again: the log must still refuse
        with pytest.raises(LogUnavailableError, match="is broken and refuses appends"):
            await log.append([added(3)])
        with pytest.raises(LogUnavailableError, match="is broken and refuses appends"):
            await log.compact(retention=timedelta(0))
        assert await log.head() == 2  # reads still answer from memory
        assert sorted(await log.load_table()) == ["/user/u1/", "/user/u2/"]
    finally:
        await log.aclose()
    async with await FileRouteLog.open(path) as again:  # reopening recovers
        assert await again.head() == 2
        assert sorted(await again.load_table()) == ["/user/u1/", "/user/u2/"]
        assert await again.append([added(3)]) == [3]
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert sorted(await reader.load_table()) == ["/user/u1/", "/user/u2/", "/user/u3/"]


async def test_refresh_failures_are_log_errors_naming_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.log"
    await write_log(path, 1)
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert await reader.head() == 2
        real_stat = os.stat

        def stat(p: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
            if Path(p) == path:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            return real_stat(p, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(os, "stat", stat)
        with pytest.raises(LogUnavailableError, match=r"routes\.log: refresh .*Input/output error"):
            await reader.read()
        monkeypatch.undo()
        # the file was replaced (another inode) and cannot be opened again: still a log error
        await write_log(tmp_path / "other.log", 2)
        os.replace(tmp_path / "other.log", path)
        real_open = builtins.open

        def open_(p: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(p, (str, os.PathLike)) and Path(p) == path:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
            return real_open(p, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", open_)
        with pytest.raises(LogUnavailableError, match=r"routes\.log: refresh .*open files"):
            await reader.head()
        monkeypatch.undo()
        assert await reader.head() == 4


async def test_aclose_closes_its_files_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = await FileRouteLog.open(tmp_path / "routes.log")
    await log.append([added(1)])
    ours = {log._fd, log._lock_fd}
    closed_on: list[threading.Thread] = []
    real_close = os.close

    def close(fd: int) -> None:
        if fd in ours:
            closed_on.append(threading.current_thread())
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    await log.aclose()
    assert len(closed_on) == 2
    assert threading.main_thread() not in closed_on  # the event loop runs in the main thread


async def test_aclose_waits_for_an_append_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "routes.log"
    log = await FileRouteLog.open(path)
    entered, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        entered.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    result: list[list[int]] = []

    async def append() -> None:
        result.append(await log.append([added(1)]))

    async with anyio.create_task_group() as tg:
        tg.start_soon(append)
        await anyio.to_thread.run_sync(entered.wait, 10)  # the append is inside fsync
        tg.start_soon(log.aclose)
        await anyio.wait_all_tasks_blocked()  # aclose is waiting (on the writer lock)
        release.set()
    monkeypatch.undo()
    assert result == [[1]]  # acknowledged, and really written:
    async with await FileRouteLog.open(path, readonly=True) as reader:
        assert [r.seq for r in await reader.read()] == [1]
