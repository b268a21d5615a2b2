"""A read-only follower of a file log, after the writer compacted it (issue 13: the node's RSS
rose in steps at the log's compactions).

The follower used to decode the whole compacted file (snapshot and records) while its old state
was still alive, a transient of twice its state. It now keeps the records it has, decodes only
what is new and leaves the snapshot encoded until asked. What it then reads, watches and loads
must be exactly what a reader that opens the file afresh gets; a file that does not line up
with what it holds is loaded whole, as before.
"""

from __future__ import annotations

import shutil
import tracemalloc
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventproxy import CorruptLogError, LogClosedError, RouteAdded, RouteRemoved
from eventproxy.events import Event
from eventproxy.log import FileRouteLog
from eventproxy.log.file import _frame_span
from eventproxy.snapshot import pack_snapshot
from eventproxy.table import RouteTable

pytestmark = pytest.mark.anyio


def change(i: int) -> list[Event]:
    """A user's server restarting on a new port."""
    spec = f"/user/u{i % 7}/"
    return [RouteRemoved(spec), RouteAdded(spec, f"http://127.0.0.1:{20000 + i}", {"n": i})]


async def state_of(log: FileRouteLog) -> tuple[object, ...]:
    head = await log.head()  # (looks at the file)
    first = log.first_available
    snapshot = await log.snapshot()
    table = await log.load_table()
    return (
        head,
        first,
        await log.read(first),
        None if snapshot is None else (snapshot.seq, snapshot.table),
        table.seq,
        dict(table.items()),
    )


async def fresh_state(path: Path) -> tuple[object, ...]:
    log = await FileRouteLog.open(path, readonly=True)
    try:
        return await state_of(log)
    finally:
        await log.aclose()


async def compact_all(writer: FileRouteLog) -> None:
    await writer.compact(retention=timedelta(0))


async def reload_past_a_compaction(
    writer: FileRouteLog, follower: FileRouteLog, changes: range, keep: int
) -> None:
    """The writer appends ``changes`` (the follower looks), then compacts keeping ``keep``
    records, and the follower reloads (leaving the new snapshot encoded)."""
    for i in changes:
        await writer.append(change(i))
    await follower.head()
    await compact_some(writer, keep)
    await follower.head()


async def compact_some(writer: FileRouteLog, keep: int) -> None:
    """Fold all but the newest ``keep`` records (auto compaction's shape)."""
    async with writer._writer_lock():
        old = len(writer._records) - keep
        if old > 0:
            await writer._fold_oldest(old)


# a step: append n changes, compact keeping k records, or let the follower look
steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 4)),
        st.tuples(st.just("compact"), st.integers(0, 6)),
        st.tuples(st.just("look"), st.just(0)),
    ),
    min_size=1,
    max_size=25,
)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=steps)
async def test_a_follower_after_compactions_reads_what_a_fresh_reader_reads(
    tmp_path_factory: pytest.TempPathFactory, script: list[tuple[str, int]]
) -> None:
    path = tmp_path_factory.mktemp("reload") / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        n = 0
        for action, arg in script:
            if action == "append":
                for _ in range(arg):
                    await writer.append(change(n))
                    n += 1
            elif action == "compact":
                await compact_some(writer, arg)
            else:
                assert await state_of(follower) == await fresh_state(path)
        assert await state_of(follower) == await fresh_state(path)
    finally:
        await follower.aclose()
        await writer.aclose()


async def test_a_follower_reuses_its_records_and_decodes_the_snapshot_only_when_asked(
    tmp_path: Path,
) -> None:
    path = tmp_path / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        for i in range(10):
            await writer.append(change(i))
        held = await follower.read(1)
        assert len(held) == 20
        await compact_some(writer, 6)
        await writer.append(change(10))
        await follower.head()  # the reload
        records = await follower.read(follower.first_available)
        assert follower._lazy_snapshot is not None  # not decoded: nobody asked
        assert [r.seq for r in records] == list(range(15, 23))
        assert records[:6] == held[-6:]
        assert all(a is b for a, b in zip(records[:6], held[-6:], strict=True))  # the same objects
        assert (await follower.head()) == 22
        snapshot = await follower.snapshot()
        assert snapshot is not None and snapshot.seq == 14
        assert follower._lazy_snapshot is None
        assert await state_of(follower) == await fresh_state(path)
    finally:
        await follower.aclose()
        await writer.aclose()


async def test_a_snapshot_left_in_the_file_is_read_from_the_file_the_follower_read(
    tmp_path: Path,
) -> None:
    """The encoded snapshot stays in the file the follower read (held open): a later file at
    the path does not change what it decodes, damage to it is refused by its checksum, and a
    closed log refuses to read it."""
    path = tmp_path / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        await reload_past_a_compaction(writer, follower, range(10), 6)  # snapshot at seq 14
        assert follower._lazy_snapshot is not None
        expected = (await fresh_state(path))[3]
        await writer.append(change(10))
        await compact_some(writer, 0)  # another file at the path, snapshot at seq 22
        snapshot = follower._snapshot  # (no look at the file first)
        assert snapshot is not None and (snapshot.seq, snapshot.table) == expected
        assert await state_of(follower) == await fresh_state(path)  # and then it moves on

        await reload_past_a_compaction(writer, follower, range(11, 12), 1)
        assert follower._lazy_snapshot is not None
        data = bytearray(path.read_bytes())
        data[len(data) // 4] ^= 0x01  # inside the snapshot frame, in place (same inode)
        with path.open("r+b") as f:
            f.write(data)
        with pytest.raises(CorruptLogError, match="snapshot frame changed after it was read"):
            await follower.snapshot()
    finally:
        await follower.aclose()
        await writer.aclose()


async def test_a_closed_follower_does_not_read_its_encoded_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        await reload_past_a_compaction(writer, follower, range(4), 2)
        assert follower._lazy_snapshot is not None
        await follower.aclose()
        with pytest.raises(LogClosedError):
            follower._snapshot  # noqa: B018 - the property decodes
    finally:
        await follower.aclose()
        await writer.aclose()


async def test_a_watch_across_compactions_misses_nothing(tmp_path: Path) -> None:
    """The follower's watch has each record before the writer compacts past it (a watcher
    that falls behind a compaction gets CompactedError, by design); its reloads keep it going."""
    path = tmp_path / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    follower.poll_interval = 0.01
    seen: list[int] = []
    progress = anyio.Condition()

    async def consume() -> None:
        async for record in follower.watch(1):
            async with progress:
                seen.append(record.seq)
                progress.notify_all()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            for i in range(20):
                await writer.append(change(i))
                with anyio.fail_after(30):
                    async with progress:
                        while not seen or seen[-1] < 2 * (i + 1):
                            await progress.wait()
                if i % 5 == 4:
                    await compact_some(writer, 3)
            tg.cancel_scope.cancel()
    finally:
        await follower.aclose()
        await writer.aclose()
    assert seen == list(range(1, 41))


async def test_a_file_that_does_not_line_up_is_loaded_whole(tmp_path: Path) -> None:
    """An older copy of the log put back (its head is behind the follower's), and another log's
    file with a snapshot past what the follower holds: neither is mixed with the follower's
    records; it reads exactly what the file holds, as a fresh reader does."""
    path = tmp_path / "routes.log"
    backup = tmp_path / "backup.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        for i in range(4):
            await writer.append(change(i))
        await compact_some(writer, 2)
        await writer.aclose()
        shutil.copy(path, backup)  # compacted, at seq 8
        writer = await FileRouteLog.open(path)
        for i in range(4, 8):
            await writer.append(change(i))
        await compact_some(writer, 2)
        assert await follower.head() == 16
        await writer.aclose()
        (tmp_path / "swap.log").write_bytes(backup.read_bytes())
        (tmp_path / "swap.log").replace(path)  # a new inode, behind the follower
        assert await follower.head() == 8
        assert follower._lazy_snapshot is None  # loaded whole
        assert await state_of(follower) == await fresh_state(path)
    finally:
        await follower.aclose()


def test_frame_span_reads_only_the_first_keys() -> None:
    from eventproxy.events import Record, now_utc
    from eventproxy.log.file import _batch_payload
    from eventproxy.snapshot import Snapshot
    from eventproxy.table import fold_all

    ts = now_utc()
    events = [RouteAdded(f"/user/{i}/", "http://127.0.0.1:1", {"x": "y" * 900}) for i in range(4)]
    recs = [Record(seq=1 + i, ts=ts, actor="t", event=e) for i, e in enumerate(events)]
    assert _frame_span(_batch_payload(recs[2:])) == ("batch", 3, 2)
    snapshot = Snapshot(ts=ts, table=fold_all(RouteTable(), recs))
    assert _frame_span(pack_snapshot(snapshot)) == ("snapshot", 4, 0)
    assert _frame_span(b"\x93\x01\x02\x03") is None  # not a map
    assert _frame_span(b"\x81\xa4type\xa5batch") is None  # no records
    assert _frame_span(b"") is None


@pytest.mark.parametrize("behind", [False, True], ids=["at-head", "a-change-behind"])
async def test_a_reload_streams_the_file_and_holds_none_of_its_bytes(
    tmp_path: Path, behind: bool
) -> None:
    """1,000 routes, 1,000 restarts, compacted: the traced peak of the follower's reload, and
    what it holds afterwards. The full decode of the whole file peaked at 1,782 KB for this
    154 KB file (11.6x); reusing the records but reading the file whole into one buffer, at
    361 KB (2.3x), and kept the snapshot's bytes. Streamed, the reload peaks at 67 KB and
    holds 20 KB more than before (the new records' list), not the snapshot: it stays in the
    file until asked for (checked by state_of, which asks).

    ``behind``: auto compaction's usual order, the append that crosses the threshold compacts
    before the follower has looked, so the follower lacks the newest records of the rewritten
    tail. With the tail in one frame it decoded all 1,000 records of it to get two (peak
    1,037 KB for a 154 KB file); in frames of 64 records it decodes the last frame (73 KB)."""
    path = tmp_path / "routes.log"
    writer = await FileRouteLog.open(path)
    follower = await FileRouteLog.open(path, readonly=True)
    try:
        await writer.append(
            [
                RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{20000 + i}", {"user": f"u{i}"})
                for i in range(1000)
            ]
        )
        for i in range(1000):
            await writer.append(
                [
                    RouteRemoved(f"/user/u{i}/"),
                    RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{30000 + i}", {"user": f"u{i}"}),
                ]
            )
        assert await follower.head() == 3000
        if behind:
            await writer.append(change(1))
            await compact_some(writer, 1000)
        else:
            await compact_some(writer, 1000)
            await writer.append(change(1))
        size = path.stat().st_size
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            follower._refresh_sync()
            peak = tracemalloc.get_traced_memory()[1] - before
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert await follower.head() == 3002
        assert size > 150_000
        assert peak < size / 2, (peak, size)
        assert held < size / 4, (held, size)
        assert await state_of(follower) == await fresh_state(path)
    finally:
        await follower.aclose()
        await writer.aclose()
