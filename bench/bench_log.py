"""Route log benchmarks: append throughput, durable batch latency, replay time.

Targets (issue: foundation): replay of 100k events < 1 s; a 1000-event batch durable (fsync'd)
in < 50 ms. Appends/s for single events and batches of 100, memory and file logs.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from eventproxy import RouteAdded, RouteRemoved, RouteTable, fold_all, open_log
from eventproxy._gc import paused_gc
from eventproxy.events import Event
from eventproxy.log import FileRouteLog


def event(i: int) -> Event:
    if i % 4 == 3:
        return RouteRemoved(f"/user/user{i - 1}/")
    return RouteAdded(
        f"/user/user{i}/",
        f"http://10.0.{i % 250}.{i % 200}:8888",
        {"user": f"user{i}", "server_name": "", "last_activity": None},
    )


async def appends_per_second(url: str, batch: int, total: int) -> float:
    events = [event(i) for i in range(total)]
    async with await open_log(url) as log:
        started = time.perf_counter()
        for i in range(0, total, batch):
            await log.append(events[i : i + batch])
        elapsed = time.perf_counter() - started
    return total / elapsed


async def durable_batch_ms(path: Path, size: int, repeats: int) -> list[float]:
    async with await FileRouteLog.open(path) as log:
        times = []
        for r in range(repeats):
            batch = [event(r * size + i) for i in range(size)]
            started = time.perf_counter()
            await log.append(batch)
            times.append((time.perf_counter() - started) * 1000)
    return times


_REPLAY_CHILD = """
import sys, time, anyio
from eventproxy.log import FileRouteLog

async def main():
    started = time.perf_counter()
    async with await FileRouteLog.open(sys.argv[1], readonly=True) as log:
        opened = time.perf_counter()
        table = await log.load_table()
    done = time.perf_counter()
    print(opened - started, done - opened, table.seq)

anyio.run(main)
"""


def replay_in_a_fresh_process(path: Path, n: int) -> tuple[float, float]:
    """Open + fold the log in a new interpreter, as a restarted hub does (no warm caches)."""
    out = subprocess.run(
        [sys.executable, "-c", _REPLAY_CHILD, str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert int(out[2]) == n
    return float(out[0]), float(out[1])


async def replay_seconds(path: Path, n: int, repeats: int = 5) -> dict[str, Any]:
    async with await FileRouteLog.open(path) as log:
        for i in range(0, n, 1000):
            await log.append([event(j) for j in range(i, i + 1000)])
    runs = [replay_in_a_fresh_process(path, n) for _ in range(repeats)]
    totals = sorted(a + b for a, b in runs)
    records = await _read_all(path)
    fold_started = time.perf_counter()
    with paused_gc():  # as load_table does
        fold_all(RouteTable(), records)
    fold_only = time.perf_counter() - fold_started
    return {
        "measured_in": "a fresh process per replay (a restarted hub)",
        "repeats": repeats,
        "total_s_median": round(statistics.median(totals), 3),
        "total_s_min": round(totals[0], 3),
        "total_s_max": round(totals[-1], 3),
        "open_and_decode_s_median": round(statistics.median(a for a, _ in runs), 3),
        "fold_s_median": round(statistics.median(b for _, b in runs), 3),
        "fold_only_s": round(fold_only, 3),
        "records": len(records),
    }


async def _read_all(path: Path) -> list[Any]:
    async with await FileRouteLog.open(path, readonly=True) as log:
        return await log.read()


async def main(quick: bool) -> dict[str, Any]:
    scale = 10 if quick else 1
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        for backend in ("memory", "file"):
            for batch, total in ((1, 2000 // scale), (100, 50000 // scale)):
                url = "memory://" if backend == "memory" else f"file://{base}/{backend}-{batch}.log"
                rate = await appends_per_second(url, batch, total)
                results[f"{backend}_events_per_s_batch_{batch}"] = round(rate)
                results[f"{backend}_appends_per_s_batch_{batch}"] = round(rate / batch, 1)
        times = await durable_batch_ms(base / "durable.log", 1000, 30 // scale or 3)
        results["durable_1000_event_batch_ms"] = {
            "p50": round(statistics.median(times), 2),
            "max": round(max(times), 2),
            "target_ms": 50,
        }
        n = 100_000 // scale
        results[f"replay_{n}_events"] = {
            **(await replay_seconds(base / "replay.log", n)),
            "target_s": 1.0 if n == 100_000 else None,
        }
    return results


def run(ctx: Any) -> dict[str, Any]:
    return anyio.run(main, ctx.quick)
