"""A data-plane node catching up on the log, against a replay (issue 7, item 6).

One file log: 10,000 routes added, then 100,000 churn events on them (re-targets, removals and
re-adds, as users start and stop servers), appended in batches of 100. Measured in this process
on the same log, each a median of ``repeats`` runs:

* **replay**: what a restarted node does once the log is open: ``load_table()`` (fold all
  110,000 records) and install the table into an empty ``DataPlane`` through a
  ``PlaneProjection``;
* **catch-up**: a node already serving the first 10,000 routes (set up untimed, from
  ``load_table(at=10000)``) runs ``eventproxy.serve.follow`` (what ``eventproxy dataplane
  --log-url`` runs): it watches the log from seq 10,001 and takes what has arrived, up to
  ``CATCH_UP_BATCH`` (100,000) records at a time, as one batch, folded in place and its net
  difference applied to the plane in one step; timed until it has applied the last record;
* **catch-up in batches of 10,000**: the same with ``max_batch=10_000`` (the batch size before),
  to show what smaller batches cost: each batch changes up to every route it touched;
* opening the log (reading and decoding the file) is the same for both and reported apart;
* **one record at a time**: the same catch-up with ``projection.apply([record])`` per record
  (how the follower applied records before), to show that it is linear now too;
* **old fold**: the cost the old projection paid per record, a copy of the whole table
  (``fold_all(table, [record])``), measured over ``old_sample`` records and extrapolated
  linearly to 100,000 (running it whole takes minutes, which is the defect).

The claim: catch-up / replay is about 1 (both are O(records + routes)).
"""

from __future__ import annotations

import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from eventproxy import RouteAdded, RouteRemoved, fold_all
from eventproxy._gc import paused_gc
from eventproxy.events import Event, Record
from eventproxy.log import FileRouteLog
from eventproxy.projection import PlaneProjection
from eventproxy.serve import CATCH_UP_BATCH, follow
from eventproxy_dataplane import DataPlane, RoutingTable


def spec(i: int) -> str:
    return f"/user/user{i:05d}/"


def target(i: int, generation: int) -> str:
    return f"http://10.{generation % 200}.{i // 250}.{i % 250}:8888"


def churn(routes: int, events: int, seed: int = 7) -> list[Event]:
    """``events`` changes over ``routes`` user routes: a removal, a re-add, or a new server."""
    rng = random.Random(seed)
    live = set(range(routes))
    out: list[Event] = []
    for n in range(events):
        i = rng.randrange(routes)
        if i in live and rng.random() < 0.5:
            out.append(RouteRemoved(spec(i)))
            live.discard(i)
        else:
            out.append(RouteAdded(spec(i), target(i, n), {"user": f"user{i}", "server_name": ""}))
            live.add(i)
    return out


async def write_log(path: Path, routes: int, events: int) -> None:
    async with await FileRouteLog.open(path) as log:
        adds: list[Event] = [
            RouteAdded(spec(i), target(i, 0), {"user": f"user{i}", "server_name": ""})
            for i in range(routes)
        ]
        for i in range(0, routes, 1000):
            await log.append(adds[i : i + 1000])
        changes = churn(routes, events)
        for i in range(0, events, 100):
            await log.append(changes[i : i + 100])


async def replay(path: Path) -> tuple[float, float, int]:
    """(open and decode s, fold and install s, routes)."""
    started = time.perf_counter()
    async with await FileRouteLog.open(path, readonly=True) as log:
        opened = time.perf_counter()
        projection = PlaneProjection(DataPlane(RoutingTable()))
        projection.reset(await log.load_table())
        done = time.perf_counter()
    return opened - started, done - opened, len(projection.table)


async def node_at(log: FileRouteLog, seq: int) -> PlaneProjection:
    projection = PlaneProjection(DataPlane(RoutingTable()))
    projection.reset(await log.load_table(at=seq))
    return projection


async def catch_up_time(
    path: Path, routes: int, head: int, max_batch: int = CATCH_UP_BATCH
) -> tuple[float, int, int]:
    """(seconds, routes at the end, plane changes) for a node ``head - routes`` records behind."""
    async with await FileRouteLog.open(path, readonly=True) as log:
        projection = await node_at(log, routes)
        plane = projection.plane
        assert plane is not None
        generation = plane.generation
        caught_up = anyio.Event()
        apply = projection.apply

        def apply_and_check(records: list[Record]) -> None:
            apply(records)
            if projection.seq == head:
                caught_up.set()

        projection.apply = apply_and_check  # type: ignore[method-assign]
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: follow(log, projection, max_batch=max_batch))
            with anyio.fail_after(600):
                await caught_up.wait()
            elapsed = time.perf_counter() - started
            tg.cancel_scope.cancel()
        return elapsed, len(projection.table), plane.generation - generation


async def one_at_a_time(path: Path, routes: int, head: int) -> float:
    async with await FileRouteLog.open(path, readonly=True) as log:
        projection = await node_at(log, routes)
        records = await log.read(routes + 1)
        started = time.perf_counter()
        for record in records:
            projection.apply([record])
        elapsed = time.perf_counter() - started
        assert projection.seq == head
        return elapsed


async def old_fold_per_record(path: Path, routes: int, sample: int) -> float:
    """Seconds per record of the old projection's fold: a copy of the whole table per record."""
    async with await FileRouteLog.open(path, readonly=True) as log:
        table = await log.load_table(at=routes)
        records = await log.read(routes + 1, limit=sample)
    started = time.perf_counter()
    with paused_gc():
        for record in records:
            table = fold_all(table, [record])
    return (time.perf_counter() - started) / len(records)


async def main(quick: bool) -> dict[str, Any]:
    routes, events, repeats, sample = (2000, 20000, 3, 500) if quick else (10000, 100000, 5, 2000)
    head = routes + events
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "routes.log"
        written = time.perf_counter()
        await write_log(path, routes, events)
        written = time.perf_counter() - written
        replays, catch_ups, small, singles, opens = [], [], [], [], []
        final_routes = batches = small_batches = 0
        for _ in range(repeats):  # interleaved, so machine noise hits both alike
            opened, seconds, final_routes = await replay(path)
            opens.append(opened)
            replays.append(seconds)
            seconds, caught_routes, batches = await catch_up_time(path, routes, head)
            assert caught_routes == final_routes
            catch_ups.append(seconds)
            seconds, caught_routes, small_batches = await catch_up_time(path, routes, head, 10_000)
            assert caught_routes == final_routes
            small.append(seconds)
        for _ in range(max(1, repeats // 2)):
            singles.append(await one_at_a_time(path, routes, head))
        old_per_record = await old_fold_per_record(path, routes, sample)
    replay_s = statistics.median(replays)
    catch_up_s = statistics.median(catch_ups)
    return {
        "parameters": {
            "routes_at_start": routes,
            "events_behind": events,
            "final_routes": final_routes,
            "catch_up_batch": CATCH_UP_BATCH,
            "repeats": repeats,
            "log_written_s": round(written, 2),
        },
        "open_and_decode_log_s": round(statistics.median(opens), 3),
        "replay_s": {"median": round(replay_s, 3), "runs": [round(x, 3) for x in replays]},
        "catch_up_s": {"median": round(catch_up_s, 3), "runs": [round(x, 3) for x in catch_ups]},
        "catch_up_plane_batches": batches,
        "catch_up_10k_batches_s": {
            "median": round(statistics.median(small), 3),
            "runs": [round(x, 3) for x in small],
            "plane_batches": small_batches,
            "over_replay": round(statistics.median(small) / replay_s, 2),
        },
        "catch_up_over_replay": round(catch_up_s / replay_s, 2),
        "one_record_at_a_time_s": round(statistics.median(singles), 3),
        "old_fold_copy_per_record_ms": round(old_per_record * 1000, 4),
        "old_fold_extrapolated_s": round(old_per_record * events, 1),
        "old_fold_sample_records": sample,
    }


def run(ctx: Any) -> dict[str, Any]:
    load_before = os.getloadavg()
    result = anyio.run(main, ctx.quick)
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }
    return result
