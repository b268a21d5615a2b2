"""The RouteLog contract, run against every local backend (memory and file) on asyncio and trio.

The same suite is meant to run against every backend (etcd joins when it lands): ordering,
atomic batches, optimistic concurrency, watch, compaction, reopening.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import anyio
import pytest

from eventproxy import (
    AppendConflictError,
    CompactedError,
    InvalidRouteDataError,
    InvalidRoutespecError,
    LogClosedError,
    RouteAdded,
    RouteLog,
    RouteRemoved,
    RouteTable,
    fold_all,
)

LogOpener = Callable[..., Awaitable[RouteLog]]

pytestmark = pytest.mark.anyio


def added(i: int, **data: object) -> RouteAdded:
    return RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{10000 + i}", dict(data))


async def test_empty_log(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        assert await log.head() == 0
        assert await log.read() == []
        assert await log.snapshot() is None
        assert await log.load_table() == RouteTable()


async def test_append_assigns_gap_free_seqs_and_reads_back(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        assert await log.append([added(1)], actor="hub") == [1]
        assert await log.append([added(2), RouteRemoved("/user/u1/"), added(3)]) == [2, 3, 4]
        assert await log.append([]) == []
        records = await log.read()
        assert [r.seq for r in records] == [1, 2, 3, 4]
        assert records[0].actor == "hub" and records[1].actor == "eventproxy"
        assert records[0].ts <= records[1].ts
        assert records[1].ts == records[3].ts  # one batch, one time
        assert [r.seq for r in await log.read(3)] == [3, 4]
        assert [r.seq for r in await log.read(2, limit=1)] == [2]
        assert await log.read(5) == []
        assert await log.head() == 4
        table = await log.load_table()
        assert sorted(table) == ["/user/u2/", "/user/u3/"]
        assert (await log.load_table(at=2))["/user/u1/"].target == "http://127.0.0.1:10001"


async def test_appended_gives_the_batch_as_stored(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1)])
        seqs = await log.append([added(2), RouteRemoved("/user/u1/")], actor="hub")
        records = log.appended(seqs)
        # None is allowed by the port (then the writer reads); every backend keeps its batch
        assert records is not None
        assert records == await log.read(seqs[0], limit=len(seqs))
        assert [r.actor for r in records] == ["hub", "hub"]
        assert log.appended([7, 8]) is None


async def test_records_survive_reopening(open_route_log: LogOpener) -> None:
    log = await open_route_log()
    await log.append([added(1, flag=True, n=1)])
    await log.append([RouteRemoved("/user/u1/"), added(2, nested={"a": [1.5, None]})])
    before = await log.read()
    await log.aclose()
    async with await open_route_log() as log:
        assert await log.read() == before
        data = (await log.load_table())["/user/u2/"].data
        assert repr(data) == repr({"nested": {"a": [1.5, None]}})
        assert await log.append([added(3)]) == [4]


async def test_a_batch_with_an_invalid_event_is_refused_whole(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1)])
        with pytest.raises(InvalidRoutespecError):
            # the bad event cannot even be built, so nothing of the batch reaches the log
            await log.append([added(2), RouteRemoved("/user/../hub/")])
        assert await log.head() == 1


def unstorable(kind: str) -> RouteAdded:
    """An event that passes its constructor but that no log can store: it reaches ``append``."""
    if kind == "surrogate":  # a str msgpack cannot encode as UTF-8 (e.g. from surrogateescape)
        return RouteAdded("/user/bad/", "http://127.0.0.1:9", {"note": "caf\udce9"})
    event = RouteAdded("/user/bad/", "http://127.0.0.1:9", {"note": "fine"})
    event.data["note"] = object()  # the caller changed the data after it was validated
    return event


@pytest.mark.parametrize("kind", ["surrogate", "mutated"])
async def test_a_failed_batch_leaves_the_log_unchanged(
    open_route_log: LogOpener, kind: str
) -> None:
    log = await open_route_log()
    await log.append([added(1), added(2)])
    await log.append([RouteRemoved("/user/u1/"), added(3)])
    head, records, table = await log.head(), await log.read(), await log.load_table()
    with pytest.raises(InvalidRouteDataError, match=r"route '/user/bad/' cannot be stored"):
        await log.append([added(4), unstorable(kind), added(5)])
    assert await log.head() == head == 4
    assert await log.read() == records
    assert await log.load_table() == table
    assert await log.append([added(6)]) == [5]  # the next seq follows the last good batch
    await log.aclose()
    async with await open_route_log() as log:
        again = await log.read()
        assert again[:-1] == records and [r.seq for r in again] == [1, 2, 3, 4, 5]
        assert sorted(await log.load_table()) == ["/user/u2/", "/user/u3/", "/user/u6/"]


async def test_expected_head_detects_a_concurrent_writer(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1)])
        with pytest.raises(AppendConflictError, match="expected head 0"):
            await log.append([added(2)], expected_head=0)
        assert await log.append([added(2)], expected_head=1) == [2]
        assert await log.head() == 2


async def test_concurrent_appends_are_serialised_without_gaps(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:

        async def writer(w: int) -> None:
            for i in range(10):
                await log.append([added(w * 100 + i), added(w * 100 + i + 50)])

        async with anyio.create_task_group() as tg:
            for w in range(5):
                tg.start_soon(writer, w)
        records = await log.read()
        assert [r.seq for r in records] == list(range(1, 101))
        # batches stay contiguous
        for i in range(0, 100, 2):
            assert records[i].event.routespec.removeprefix("/user/u").rstrip("/") == str(
                int(records[i + 1].event.routespec.removeprefix("/user/u").rstrip("/")) - 50
            )


async def test_watch_yields_history_then_new_records(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1), added(2)])
        seen: list[int] = []
        appended = anyio.Event()

        async def consume() -> None:
            async for record in log.watch(2):
                seen.append(record.seq)
                if record.seq == 2:
                    appended.set()
                if record.seq == 5:
                    return

        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(consume)
                await appended.wait()
                await log.append([added(3)])
                await log.append([added(4), added(5)])
        assert seen == [2, 3, 4, 5]


async def test_a_slow_watcher_misses_nothing(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        total = 3000
        got: list[int] = []

        async def slow() -> None:
            async for record in log.watch():
                got.append(record.seq)
                if record.seq % 500 == 0:
                    await anyio.sleep(0.01)  # a consumer busy elsewhere
                if record.seq == total:
                    return

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(slow)
                for i in range(0, total, 100):
                    await log.append([added(j) for j in range(i, i + 100)])
        assert got == list(range(1, total + 1))


async def test_watch_ends_when_the_log_closes(open_route_log: LogOpener) -> None:
    log = await open_route_log()
    await log.append([added(1)])
    seen: list[int] = []
    got_first = anyio.Event()

    async def consume() -> None:
        async for record in log.watch():
            seen.append(record.seq)
            got_first.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            await got_first.wait()
            await log.aclose()
    assert seen == [1]
    with pytest.raises(LogClosedError):
        await log.append([added(2)])


async def test_compaction_keeps_replay_equal(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(i) for i in range(10)])
        await log.append([RouteRemoved(f"/user/u{i}/") for i in range(0, 10, 2)])
        full = await log.load_table()
        before = await log.read()
        result = await log.compact(retention=timedelta(0))
        assert (result.snapshot_seq, result.dropped, result.retained) == (15, 15, 0)
        assert (await log.snapshot()).seq == 15  # type: ignore[union-attr]
        assert await log.load_table() == full
        assert await log.head() == 15
        with pytest.raises(CompactedError) as info:
            await log.read(3)
        assert info.value.first_available == 16
        await log.append([added(99)])
        assert [r.seq for r in await log.read(16)] == [16]
        assert await log.load_table() == fold_all(RouteTable(), [*before, *await log.read(16)])


async def test_compaction_respects_retention(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1), added(2)])
        first = await log.read()
        await log.append([added(3)])
        later = (await log.read(3))[0].ts
        # Cut between the two batches: only the first batch is older than the retention.
        result = await log.compact(retention=timedelta(0), now=first[0].ts)
        assert (result.snapshot_seq, result.dropped, result.retained) == (2, 2, 1)
        assert [r.seq for r in await log.read(3)] == [3]
        nothing = await log.compact(retention=timedelta(days=1), now=later)
        assert (nothing.snapshot_seq, nothing.dropped) == (2, 0)
        with pytest.raises(CompactedError):
            await log.load_table(at=1)
        assert sorted(await log.load_table(at=2)) == ["/user/u1/", "/user/u2/"]


async def test_compacted_log_survives_reopening(open_route_log: LogOpener) -> None:
    log = await open_route_log()
    await log.append([added(i) for i in range(5)])
    await log.compact(retention=timedelta(0))
    await log.append([RouteRemoved("/user/u0/")])
    table = await log.load_table()
    await log.aclose()
    async with await open_route_log() as log:
        assert await log.load_table() == table
        assert await log.head() == 6
        assert await log.append([added(7)]) == [7]


async def test_watch_from_a_compacted_position_says_so(open_route_log: LogOpener) -> None:
    async with await open_route_log() as log:
        await log.append([added(1), added(2)])
        await log.compact(retention=timedelta(0))
        with pytest.raises(CompactedError):
            async for _ in log.watch(1):
                pass  # pragma: no cover
