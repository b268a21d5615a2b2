"""A long-running writer's log stays bounded: automatic compaction (issue 13's RSS growth).

The soak found the hub's and the node's memory growing with every route change: a local log
keeps its records in memory, and nothing compacted a log that ``EventProxy`` keeps open for
days. These tests pin the bound (records after the snapshot <= max(auto_compact, 2 * routes)),
that nothing is lost (snapshot + tail folds to the same table as every event, also after
reopening and for a follower), and that ``open_log`` gives a writer the bound by default.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from eventproxy import RouteAdded, RouteRemoved, open_log
from eventproxy.log import AUTO_COMPACT_RECORDS, FileRouteLog
from eventproxy.log._base import LocalRouteLog
from eventproxy.table import RouteTable, fold_all

pytestmark = pytest.mark.anyio


def churn(rng: random.Random, live: dict[str, int], n: int) -> list[RouteAdded | RouteRemoved]:
    """``n`` events: users' servers restarting (remove, then add on a new port)."""
    out: list[RouteAdded | RouteRemoved] = []
    for _ in range(n // 2):
        spec = f"/user/u{rng.randrange(len(live))}/"
        port = live[spec] = live[spec] + 1
        out += [RouteRemoved(spec), RouteAdded(spec, f"http://127.0.0.1:{port}", {"p": port})]
    return out


async def table_of(log: LocalRouteLog) -> RouteTable:
    snapshot = await log.snapshot()
    base = snapshot.table if snapshot is not None else RouteTable()
    return fold_all(base, await log.read(log.first_available))


async def test_records_held_stay_bounded_and_nothing_is_lost(tmp_path: Path) -> None:
    rng = random.Random(13)
    routes = 50
    live = {f"/user/u{i}/": 20000 + 100 * i for i in range(routes)}
    events = [RouteAdded(s, f"http://127.0.0.1:{p}", {"p": p}) for s, p in live.items()]
    path = tmp_path / "routes.log"
    async with (
        await FileRouteLog.open(path, auto_compact=64) as log,
        await FileRouteLog.open(path, readonly=True) as follower,
    ):
        for start in range(0, len(events), 10):
            await log.append(events[start : start + 10])
        most = 0
        for _ in range(300):  # 3,000 events for 50 routes
            batch = churn(rng, live, 10)
            events += batch
            await log.append(batch)
            held = len(await log.read(log.first_available))
            most = max(most, held)
            assert held <= max(64, 2 * routes), held
        assert most > 32  # it did hold a tail, not compact every record away
        assert await log.head() == len(events)
        expected = fold_all(RouteTable(), [_rec(i + 1, e) for i, e in enumerate(events)])
        assert dict(await table_of(log)) == dict(expected)
        # a follower (a node reading the same file) ends up with the same table, bounded too
        assert await follower.head() == len(events)
        assert dict(await table_of(follower)) == dict(expected)
        assert len(await follower.read(follower.first_available)) <= max(64, 2 * routes)
    async with await FileRouteLog.open(path, readonly=True) as reopened:
        assert dict(await table_of(reopened)) == dict(expected)


def _rec(seq: int, event: RouteAdded | RouteRemoved) -> object:
    from eventproxy.events import Record, now_utc

    return Record(seq=seq, ts=now_utc(), actor="t", event=event)


async def test_bound_grows_with_the_live_routes(tmp_path: Path) -> None:
    """With more routes than ``auto_compact``, the tail may reach twice the routes: a snapshot
    (all routes) is rewritten at most once per that many appends."""
    async with await FileRouteLog.open(tmp_path / "r.log", auto_compact=16) as log:
        await log.append([RouteAdded(f"/user/u{i}/", "http://127.0.0.1:1", {}) for i in range(40)])
        most = 0
        for i in range(200):  # servers moving to new ports: the table keeps its 40 routes
            await log.append([RouteAdded(f"/user/u{i % 40}/", f"http://127.0.0.1:{i + 2}", {})])
            snapshot = await log.snapshot()
            assert snapshot is not None
            held = len(await log.read(log.first_available))
            assert held <= max(16, 2 * len(snapshot.table)), (held, len(snapshot.table))
            most = max(most, held)
        assert len(snapshot.table) == 40
        assert most == 80  # the bound is 2 * routes here, not auto_compact


async def test_open_log_gives_a_writer_the_bound(tmp_path: Path) -> None:
    """What EventProxy opens (``open_log``) is bounded by default; readers never compact."""
    url = f"file://{tmp_path}/routes.log"
    rng = random.Random(7)
    live = {f"/user/u{i}/": 30000 + 100 * i for i in range(10)}
    async with await open_log(url) as log, await open_log(url, readonly=True) as reader:
        assert isinstance(log, LocalRouteLog) and log.auto_compact == AUTO_COMPACT_RECORDS
        assert isinstance(reader, LocalRouteLog) and reader.auto_compact is None
        for _ in range(3 * AUTO_COMPACT_RECORDS // 20):
            await log.append(churn(rng, live, 20))
        assert await log.head() == 3 * AUTO_COMPACT_RECORDS // 20 * 20
        assert len(await log.read(log.first_available)) <= AUTO_COMPACT_RECORDS
    async with await open_log(url, auto_compact=None) as log:
        assert isinstance(log, LocalRouteLog) and log.auto_compact is None


def test_auto_compact_must_be_a_usable_bound() -> None:
    with pytest.raises(ValueError, match="auto_compact must be at least 2"):
        FileRouteLog(Path("x.log"), readonly=False, fsync=False, poll_interval=1, auto_compact=1)


async def test_compaction_spares_what_a_lagging_watcher_has_not_read(tmp_path: Path) -> None:
    """A watcher that falls behind (its consumer busy) gets every record once it catches up:
    automatic compaction folds only the records before its position (the contract test
    ``test_a_slow_watcher_misses_nothing`` failed on the file log before: CompactedError)."""
    async with await FileRouteLog.open(tmp_path / "r.log", auto_compact=16) as log:
        watch = log.watch()
        await log.append([RouteAdded("/user/a/", "http://127.0.0.1:1", {})])
        first = await anext(watch)
        assert first.seq == 1
        for i in range(40):  # the watcher reads nothing meanwhile: 41 records, bound 16
            await log.append([RouteAdded(f"/user/u{i}/", "http://127.0.0.1:1", {})])
        assert log.first_available <= 2  # nothing it has yet to read was folded
        got = [(await anext(watch)).seq for _ in range(40)]
        assert got == list(range(2, 42))
        await log.append([RouteAdded("/user/b/", "http://127.0.0.1:2", {})])
        # caught up, it no longer holds the tail: the next append compacts as usual
        assert log.first_available > 2
        assert len(await log.read(log.first_available)) <= max(16, 2 * 42)
        assert (await anext(watch)).seq == 42


async def test_a_watcher_far_behind_does_not_hold_the_writers_memory(tmp_path: Path) -> None:
    """A consumer that never reads cannot make the writer keep every record: past four bounds
    the log compacts anyway and that watcher is told (CompactedError; EventProxy reloads)."""
    from eventproxy import CompactedError

    async with await FileRouteLog.open(tmp_path / "r.log", auto_compact=16) as log:
        stuck = log.watch()
        most = 0
        for i in range(100):
            await log.append([RouteAdded(f"/user/u{i % 8}/", f"http://127.0.0.1:{i + 1}", {})])
            most = max(most, len(await log.read(log.first_available)))
        assert 16 < most <= 4 * 16 + 1
        with pytest.raises(CompactedError, match="compacted"):
            await anext(stuck)
        # a watcher that is dropped stops counting at once
        del stuck
        for i in range(20):
            await log.append([RouteAdded(f"/user/u{i % 8}/", f"http://127.0.0.1:{i + 1}", {})])
        assert len(await log.read(log.first_available)) <= 16
