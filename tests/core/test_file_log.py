"""File log specifics: torn tails, corruption with offsets, the writer lock, readers, rollback."""

from __future__ import annotations

import logging
import os
from pathlib import Path

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
