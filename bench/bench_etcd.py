"""The etcd route log and data-plane nodes (issue 8), one run, on 127.0.0.1:

* add_route -> visible on 2 ``eventproxy dataplane`` nodes, p50/p99 over 200 sequential adds
  (EventProxy, ``data_plane = "external"``, returns when both nodes' ``/health?min_seq`` say so);
* 1,000 concurrent adds (``asyncio.gather``) until visible on both nodes;
* replay of 100k events from etcd (``load_table`` on a freshly opened log, median of 3).

Targets (issue 8): add->visible p50 <= 10 ms, p99 <= 50 ms; 1,000 concurrent adds <= 1 s;
replay of 100k events <= 3 s.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from test_etcd_node import Node  # noqa: E402

from eventproxy import EventProxy, RouteAdded, open_log  # noqa: E402
from support import free_port  # noqa: E402
from support.etcd import running_etcd  # noqa: E402

TARGET = "http://127.0.0.1:9"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _proxy_part(url: str, nodes: list[Node], sequential: int, burst: int) -> dict[str, Any]:
    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{free_port()}/",
        log_url=url,
        data_plane="external",
        data_plane_endpoints=[f"http://127.0.0.1:{n.admin}" for n in nodes],
        visibility_timeout=30.0,
    )
    await proxy.start()
    try:
        times = []
        for i in range(sequential):
            began = time.perf_counter()
            await proxy.add_route(f"/user/seq{i}/", TARGET, {})
            times.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await asyncio.gather(
            *(proxy.add_route(f"/user/burst{i}/", TARGET, {}) for i in range(burst))
        )
        burst_s = time.perf_counter() - began
    finally:
        await proxy.stop()
    return {
        "add_visible_2_nodes_ms": {
            "n": sequential,
            "p50": round(statistics.median(times), 2),
            "p99": round(_pct(times, 0.99), 2),
            "target_p50": 10,
            "target_p99": 50,
        },
        "concurrent_adds_visible_2_nodes_s": {
            "n": burst,
            "seconds": round(burst_s, 3),
            "target": 1.0,
        },
    }


async def _replay_part(url: str, events: int) -> dict[str, Any]:
    async with await open_log(url) as log:
        for start in range(0, events, 1000):
            await log.append(
                [RouteAdded(f"/user/r{i}/", TARGET, {}) for i in range(start, start + 1000)]
            )
    runs, cpu = [], []
    for _ in range(3):
        began, began_cpu = time.perf_counter(), time.process_time()
        async with await open_log(url, readonly=True) as log:
            table = await log.load_table()
        runs.append(time.perf_counter() - began)
        cpu.append(time.process_time() - began_cpu)
        assert table.seq == events
    return {
        "replay_from_etcd_s": {
            "events": events,
            "median": round(statistics.median(runs), 3),
            "runs": [round(r, 3) for r in runs],
            # this process's CPU time (decoding and folding; etcd's own is not counted): what
            # the replay costs apart from waiting for a busy machine
            "cpu_s": [round(c, 3) for c in cpu],
            "target": 3.0,
        }
    }


def run(ctx: Any) -> dict[str, Any]:
    sequential, burst, events = (20, 100, 10_000) if ctx.quick else (200, 1000, 100_000)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        with running_etcd(base / "etcd") as etcd:
            url = f"etcd://127.0.0.1:{etcd.client_port}/bench"
            nodes = [Node(base / f"n{i}", url) for i in range(2)]
            for node in nodes:
                node.log_path.parent.mkdir(parents=True)
                node.start()
            try:
                result = asyncio.run(_proxy_part(url, nodes, sequential, burst))
            finally:
                for node in nodes:
                    node.stop()
            result.update(
                asyncio.run(_replay_part(f"etcd://127.0.0.1:{etcd.client_port}/replay", events))
            )
    result["load_average"] = {
        "before": [round(x, 2) for x in load_before],
        "after": [round(x, 2) for x in os.getloadavg()],
        "cores": os.cpu_count(),
    }
    return result
