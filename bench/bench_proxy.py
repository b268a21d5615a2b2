"""JupyterHub-facing proxy benchmarks: EventProxy (in-process data plane; file and memory logs)
side by side with JupyterHub's ConfigurableHTTPProxy + npm configurable-http-proxy, one run.

Measured through JupyterHub's own Proxy API objects (``add_route``, ``get_all_routes``):
* add_route -> visible latency, p50/p99 over 200 sequential adds (EventProxy's add_route returns
  only when the route is durable and routed; CHP's when its API answered);
* 1,000 routes added concurrently (``asyncio.gather``), wall time;
* get_all_routes with 1,000 and 10,000 routes, median of 5 calls.
Targets (issue 4): add->visible p50 <= 2 ms; 1,000 routes <= 0.3 s; get_all_routes at 10,000
routes <= 10 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import free_port  # noqa: E402
from support.chp import CHP  # noqa: E402

TARGET = "http://127.0.0.1:9"  # nothing listens: routing is what is measured


@asynccontextmanager
async def eventproxy(log_url: str) -> AsyncIterator[Any]:
    from eventproxy import EventProxy

    proxy = EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@asynccontextmanager
async def chp(workdir: Path) -> AsyncIterator[Any]:
    from jupyterhub.proxy import ConfigurableHTTPProxy

    process = CHP(workdir)
    proxy = ConfigurableHTTPProxy(
        should_start=False,
        public_url=process.url + "/",
        api_url=f"http://127.0.0.1:{process.api_port}",
        auth_token=process.token,
    )
    proxy.public_url = process.url + "/"
    try:
        yield proxy
    finally:
        process.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(factory: Callable[[], Any], quick: bool) -> dict[str, Any]:
    n_seq, n_bulk, big = (50, 200, 2000) if quick else (200, 1000, 10000)
    result: dict[str, Any] = {}
    async with factory() as proxy:
        latencies = []
        for i in range(n_seq):
            started = time.perf_counter()
            await proxy.add_route(f"/user/seq{i}/", TARGET, {"user": f"seq{i}"})
            latencies.append((time.perf_counter() - started) * 1000)
        result["add_visible_ms"] = {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(pct(latencies, 0.99), 3),
            "n": n_seq,
        }
        async with httpx.AsyncClient() as client:  # the last route is routed (not a 404)
            r = await client.get(proxy.public_url.rstrip("/") + f"/user/seq{n_seq - 1}/x")
            result["last_route_status"] = r.status_code
    async with factory() as proxy:
        started = time.perf_counter()
        await asyncio.gather(
            *(proxy.add_route(f"/user/bulk{i}/", TARGET, {"user": f"b{i}"}) for i in range(n_bulk))
        )
        result[f"bulk_add_{n_bulk}_s"] = round(time.perf_counter() - started, 4)
        for size in (1000, big):
            have = len(await proxy.get_all_routes())
            await asyncio.gather(
                *(
                    proxy.add_route(f"/user/big{i}/", TARGET, {"user": f"g{i}"})
                    for i in range(have, size)
                )
            )
            times = []
            for _ in range(5):
                started = time.perf_counter()
                routes = await proxy.get_all_routes()
                times.append((time.perf_counter() - started) * 1000)
            assert len(routes) >= size
            result[f"get_all_routes_{size}_ms"] = round(statistics.median(times), 3)
    return result


async def main(quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        results["eventproxy_file"] = await measure(
            lambda: eventproxy(f"file://{base}/routes-{time.monotonic_ns()}.log"), quick
        )
        results["eventproxy_memory"] = await measure(lambda: eventproxy("memory://"), quick)
        results["configurable_http_proxy"] = await measure(lambda: chp(base / "chp"), quick)
    ep, c = results["eventproxy_file"], results["configurable_http_proxy"]
    results["ratios_eventproxy_file_over_chp"] = {
        key: round(ep[key] / c[key], 3) if isinstance(ep[key], float) and c[key] else None
        for key in ep
        if key.endswith("_s") or key.endswith("_ms")
    }
    results["ratios_eventproxy_file_over_chp"]["add_visible_p50"] = round(
        ep["add_visible_ms"]["p50"] / c["add_visible_ms"]["p50"], 3
    )
    return results


def run(ctx: Any) -> dict[str, Any]:
    return asyncio.run(main(ctx.quick))
