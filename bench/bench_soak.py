"""Soak: a busy hub's workload for minutes; memory, descriptors and backend sockets over time.

Issue 13's workload, run against three proxies at the same time (each with its own load
driver, all sharing the backends, so machine noise hits them alike):

* ``eventproxy`` -- ``EventProxy`` with its in-process data plane, in a stand-in hub process
  (:mod:`bench._soak_hub`), routes changed through ``add_route``/``delete_route``;
* ``node`` -- a standalone node, ``eventproxy dataplane --log-url file://...``, following the
  log that a second stand-in hub writes (``EventProxy`` with ``data_plane = "external"``: the
  production shape, a hub appending and nodes following; its ``add_route`` returns once the
  node's ``/health?min_seq=`` has the change);
* ``chp`` -- configurable-http-proxy, routes changed through its REST API.

Workload per proxy (:mod:`bench._soak_load`): 1,000 user routes, each to its own backend port
(:mod:`bench._soak_backend`: several processes, 1,100 ports; a kept-alive connection idle for 5 s
is closed by the backend, as node's HTTP server does), 10 route changes/s (a server restarting
on a new port), 200 HTTP GETs/s, 5 WebSocket connects/s (clean closes, abrupt resets, upgrades to
a stopped server). Before the run, 3,000 route changes without traffic bring each log to its
steady state (compacted a few times, as a hub's log is after hours of use); the counts start
after them. Both eventproxy processes run under ``ulimit -n 1024`` (a hub's usual limit;
CHP runs with the benchmark's own).

Every ``interval`` seconds, from ``/proc``: RSS, open fds, and the proxy's TCP sockets to the
backends by state. After the load, a cool-down (longer than the backends' keep-alive timeout)
is sampled too: what is still in CLOSE_WAIT then is a leak. Reported per proxy: the samples,
least-squares slopes (RSS MB/min, fds/min) with r² over the loaded part after a warm-up, the
CLOSE_WAIT count during and after, the workload's counts and errors; a plot of all three.

``--quick``: 60 s of load. Full: 20 minutes, the slopes over the last 10 (see ``Params``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._soak_load import LOOPBACK, Workload
from bench._support import ROOT, ChildProcess, free_port, port_accepts, wait_until
from eventproxy.log import FileRouteLog
from support.chp import CHP
from support.procnet import (
    TcpSocket,
    fds_by_kind,
    open_fds,
    rss_bytes,
    states_to,
    tcp_sockets,
)
from support.tools import ToolMissing, ensure_chp

NOFILE = 1024  # the soft limit the eventproxy processes run under


@dataclass
class Params:
    # 20 minutes of load; the slopes are fitted over the last 10 (the steady state). The
    # node's RSS keeps settling for about its first 8 minutes of traffic (+1.5 MB, in ever
    # smaller steps; 25 minutes of the node alone: +0.015 MB/min after the first minute,
    # +0.003 over the second half), so a slope from minute 1 mixes settling with any leak. A
    # leak keeps its slope in the last 10 minutes; "from_first_minute" is reported beside it.
    duration: float = 1200.0
    interval: float = 5.0
    cool_down: float = 20.0
    warm_up: float = 600.0  # samples before this are left out of the slopes
    settle_from: float = 60.0  # "from_first_minute": the fit from here, settling included
    # route changes before the run (no traffic): with 1,000 routes the log compacts about
    # every 1,000 changes, and a process's memory settles after about three compactions (the
    # peak of a compaction or of a follower's reload, reached once); see bench/README.md
    precondition_changes: int = 3000
    routes: int = 1000
    spare_ports: int = 100
    backend_processes: int = 4
    changes_per_s: float = 10.0
    http_per_s: float = 200.0
    ws_per_s: float = 5.0
    targets: Sequence[str] = ("eventproxy", "node", "chp")

    @classmethod
    def quick(cls) -> Params:
        return cls(duration=60.0, interval=2.0, cool_down=12.0, warm_up=10.0, settle_from=10.0)


# -- how each proxy's routes change ---------------------------------------------------------
class HubControl:
    """Route changes through the stand-in hub's control socket (EventProxy's API): one
    connection per call, so calls run concurrently (as JupyterHub's do) and a call the driver
    gave up on cannot hand its answer to the next one."""

    grace = 0.0  # add_route returns when the route is routed

    def __init__(self, port: int) -> None:
        self.port = port

    async def call(self, request: dict[str, Any]) -> dict[str, Any]:
        reader, writer = await asyncio.open_connection(LOOPBACK, self.port)
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            answer: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), 60))
        finally:
            writer.close()
        if not answer.get("ok"):
            raise RuntimeError(f"hub refused {request}: {answer}")
        return answer

    async def add(self, spec: str, target: str) -> None:
        await self.call({"op": "add", "routespec": spec, "target": target})

    async def delete(self, spec: str) -> None:
        await self.call({"op": "delete", "routespec": spec})

    async def close(self) -> None:
        pass


class CHPControl:
    """Route changes through configurable-http-proxy's REST API (as JupyterHub makes them)."""

    grace = 0.0

    def __init__(self, chp: CHP) -> None:
        self.client = httpx.AsyncClient(
            base_url=f"http://{LOOPBACK}:{chp.api_port}/api/routes",
            headers={"Authorization": f"token {chp.token}"},
            timeout=30,
        )

    async def add(self, spec: str, target: str) -> None:
        r = await self.client.post(spec.rstrip("/"), json={"target": target, "user": "soak"})
        r.raise_for_status()

    async def delete(self, spec: str) -> None:
        r = await self.client.delete(spec.rstrip("/"))
        if r.status_code != 404:
            r.raise_for_status()

    async def close(self) -> None:
        await self.client.aclose()


# -- processes ------------------------------------------------------------------------------
def limited(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "bench._limit", str(NOFILE), "--", *argv]


def start_backends(stack: ExitStack, workdir: Path, params: Params) -> list[int]:
    total = params.routes + params.spare_ports
    per = math.ceil(total / params.backend_processes)
    ports: list[int] = []
    for i in range(params.backend_processes):
        log = workdir / f"backend{i}.log"
        child = ChildProcess(
            [sys.executable, "-m", "bench._soak_backend", "--count", str(per)],
            log_path=log,
            cwd=ROOT,
        )
        stack.callback(child.stop)
        wait_until(
            lambda child=child: "PORTS " in child.output(),  # type: ignore[misc]
            timeout=60,
            what="soak backend ports",
            alive=child.check_alive,
        )
        line = next(x for x in child.output().splitlines() if x.startswith("PORTS "))
        ports += [int(p) for p in line[6:].split(",")]
    return ports[:total]


@dataclass
class Running:
    name: str
    pid: int
    port: int
    workload: Workload | None = None
    close: list[Any] = field(default_factory=list)
    stats: Any = None  # async () -> dict, what the proxy says of itself at the end
    info: dict[str, Any] = field(default_factory=dict)


def start_hub(stack: ExitStack, workdir: Path) -> Running:
    port, control = free_port(), free_port()
    argv = [
        sys.executable,
        "-m",
        "bench._soak_hub",
        "--log-url",
        f"file://{workdir}/hub-routes.log",
        "--port",
        str(port),
        "--control-port",
        str(control),
    ]
    child = ChildProcess(limited(argv), log_path=workdir / "hub.log", cwd=ROOT)
    stack.callback(child.stop)
    wait_until(lambda: port_accepts(control), timeout=60, what="soak hub", alive=child.check_alive)
    hub = HubControl(control)
    running = Running("eventproxy", child.pid, port, info={"nofile": NOFILE})
    running.close.append(hub.close)
    running.stats = lambda: hub.call({"op": "stats"})
    running.info["control"] = hub
    return running


async def start_node(stack: ExitStack, workdir: Path) -> Running:
    path = workdir / "node-routes.log"
    await (await FileRouteLog.open(path)).aclose()  # the file the node opens; the hub writes it
    port, admin = free_port(), free_port()
    argv = [
        sys.executable,
        "-c",
        "import sys; from bench._tracemem import install; install('node');"
        " from eventproxy.cli import main; sys.exit(main())",
        "dataplane",
        "--log-url",
        f"file://{path}",
        "--listen",
        f"{LOOPBACK}:{port}",
        "--admin",
        f"{LOOPBACK}:{admin}",
    ]
    child = ChildProcess(limited(argv), log_path=workdir / "node.log", cwd=ROOT)
    stack.callback(child.stop)
    wait_until(lambda: port_accepts(admin), timeout=60, what="node", alive=child.check_alive)
    control = free_port()
    writer = [
        sys.executable,
        "-m",
        "bench._soak_hub",
        "--log-url",
        f"file://{path}",
        "--port",
        str(port),
        "--control-port",
        str(control),
        "--external",
        f"http://{LOOPBACK}:{admin}",
    ]
    hub = ChildProcess(writer, log_path=workdir / "node-hub.log", cwd=ROOT)
    stack.callback(hub.stop)
    wait_until(lambda: port_accepts(control), timeout=60, what="node's hub", alive=hub.check_alive)
    running = Running("node", child.pid, port, info={"nofile": NOFILE})
    running.info["control"] = HubControl(control)

    async def stats() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(f"http://{LOOPBACK}:{admin}/metrics")).text
            health = (await client.get(f"http://{LOOPBACK}:{admin}/health")).json()
        routers = {
            line.split('router="', 1)[1].split('"', 1)[0]
            for line in text.splitlines()
            if line.startswith("eventproxy_dataplane_requests_total{")
        }
        idle = [
            line.split()[-1]
            for line in text.splitlines()
            if line.startswith("eventproxy_dataplane_backend_idle_connections ")
        ]
        return {
            "counters": len(routers),
            "idle": int(idle[0]) if idle else None,
            "generation": health.get("generation"),
        }

    running.stats = stats
    return running


def start_chp_target(stack: ExitStack, workdir: Path) -> Running | str:
    try:
        version = _version(ensure_chp())
        chp = CHP(workdir / "chp")
    except (ToolMissing, OSError, RuntimeError) as exc:
        return f"configurable-http-proxy unavailable: {exc}"
    stack.callback(chp.stop)
    control = CHPControl(chp)
    running = Running("chp", chp.pid, chp.port)
    running.close.append(control.close)
    running.info["control"] = control
    running.info["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    running.info["version"] = version
    return running


def _version(binary: Path) -> str:
    import subprocess

    done = subprocess.run(
        [str(binary), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else "?"


# -- sampling and analysis --------------------------------------------------------------------
def sample(
    pid: int,
    backend_ports: set[int],
    sockets: list[TcpSocket] | None = None,
    listen_ports: Sequence[int] = (),
) -> dict[str, Any]:
    states = states_to(backend_ports, pid, sockets)
    return {
        "rss_mb": round(rss_bytes(pid) / 2**20, 2),
        "fds": open_fds(pid),
        "fd_kinds": dict(sorted(fds_by_kind(pid, backend_ports, listen_ports, sockets).items())),
        "backend_sockets": dict(sorted(states.items())),
    }


def sample_all(targets: list[Running], backend_ports: set[int]) -> dict[str, dict[str, Any]]:
    """One sample of every target, from one reading of the kernel's TCP table."""
    sockets = tcp_sockets()
    out: dict[str, dict[str, Any]] = {}
    for target in targets:
        try:
            out[target.name] = sample(target.pid, backend_ports, sockets, (target.port,))
        except OSError as exc:
            out[target.name] = {"error": str(exc)}
    return out


def fit(points: list[tuple[float, float]]) -> dict[str, float | None]:
    """Least-squares line through (minutes, value): slope per minute and r²."""
    n = len(points)
    if n < 3:
        return {"slope_per_min": None, "r2": None}
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    syy = sum((y - my) ** 2 for _, y in points)
    slope = sxy / sxx if sxx else 0.0
    r2 = (sxy * sxy) / (sxx * syy) if sxx and syy else 0.0
    return {"slope_per_min": round(slope, 3), "r2": round(r2, 3)}


def second_half(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points of the later half of the time span (by time, not by count)."""
    if not points:
        return []
    middle = (points[0][0] + points[-1][0]) / 2
    return [p for p in points if p[0] >= middle]


def analyse(samples: list[dict[str, Any]], params: Params) -> dict[str, Any]:
    good = [s for s in samples if "error" not in s]
    loaded = [s for s in good if s["phase"] == "load" and s["t"] >= params.warm_up]
    settling = [s for s in good if s["phase"] == "load" and s["t"] >= params.settle_from]
    cool = [s for s in good if s["phase"] == "cool-down"]
    load = [s for s in good if s["phase"] == "load"]

    def series(key: str, among: list[dict[str, Any]] = loaded) -> list[tuple[float, float]]:
        return [(s["t"] / 60, float(s[key])) for s in among if key in s]

    def kind_series(kind: str) -> list[tuple[float, float]]:
        return [(s["t"] / 60, float(s["fd_kinds"].get(kind, 0))) for s in loaded if "fd_kinds" in s]

    kinds = sorted({k for s in loaded for k in s.get("fd_kinds", {})})

    def close_wait(s: dict[str, Any]) -> int:
        return int(s["backend_sockets"].get("CLOSE_WAIT", 0))

    return {
        "rss_mb": {
            "start": load[0]["rss_mb"] if load else None,
            "end": load[-1]["rss_mb"] if load else None,
            **fit(series("rss_mb")),
            # a leak keeps its slope; memory settling (allocator pools reaching the working
            # set's peak) has most of its rise early and a flat second half
            "second_half": fit(second_half(series("rss_mb"))),
            "from_first_minute": fit(series("rss_mb", settling)),
        },
        "fds": {
            "start": load[0]["fds"] if load else None,
            "end": load[-1]["fds"] if load else None,
            "max": max((s["fds"] for s in load), default=None),
            **fit(series("fds")),
            "second_half": fit(second_half(series("fds"))),
            "from_first_minute": fit(series("fds", settling)),
        },
        # which descriptors a trend in "fds" is made of (backend and client sockets, files...)
        "fd_kinds": {
            kind: {
                "mean": round(sum(y for _, y in kind_series(kind)) / max(1, len(loaded)), 1),
                **fit(kind_series(kind)),
            }
            for kind in kinds
        },
        "backend_close_wait": {
            "max_under_load": max((close_wait(s) for s in load), default=None),
            "after_cool_down": close_wait(cool[-1]) if cool else None,
        },
        "backend_established_after_cool_down": (
            int(cool[-1]["backend_sockets"].get("ESTABLISHED", 0)) if cool else None
        ),
    }


async def sampler(
    targets: list[Running],
    backend_ports: set[int],
    samples: dict[str, list[dict[str, Any]]],
    started: float,
    interval: float,
    phase: list[str],
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        t = round(time.monotonic() - started, 1)
        points = await asyncio.to_thread(sample_all, targets, backend_ports)
        for target in targets:
            samples[target.name].append({"t": t, "phase": phase[0], **points[target.name]})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


async def soak(workdir: Path, params: Params) -> dict[str, Any]:
    results: dict[str, Any] = {"parameters": {**params.__dict__, "targets": list(params.targets)}}
    with ExitStack() as stack:
        backend_ports = start_backends(stack, workdir, params)
        stopped_port = free_port()  # nothing listens there: a stopped server
        targets: list[Running] = []
        unavailable: dict[str, str] = {}
        if "eventproxy" in params.targets:
            targets.append(start_hub(stack, workdir))
        if "node" in params.targets:
            targets.append(await start_node(stack, workdir))
        if "chp" in params.targets:
            chp = start_chp_target(stack, workdir)
            if isinstance(chp, str):
                unavailable["chp"] = chp
            else:
                targets.append(chp)
        try:
            for i, target in enumerate(targets):
                target.workload = Workload(
                    target.name,
                    target.port,
                    target.info.pop("control"),
                    list(backend_ports),
                    stopped_port,
                    routes=params.routes,
                    changes_per_s=params.changes_per_s,
                    http_per_s=params.http_per_s,
                    ws_per_s=params.ws_per_s,
                    seed=i + 1,
                )
            setup_started = time.monotonic()
            await asyncio.gather(
                *(t.workload.setup(params.precondition_changes) for t in targets if t.workload)
            )
            results["setup_s"] = round(time.monotonic() - setup_started, 1)
            loadavg_before = os.getloadavg()
            samples: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
            phase = ["load"]
            stop = asyncio.Event()
            started = time.monotonic()
            sampling = asyncio.create_task(
                sampler(targets, set(backend_ports), samples, started, params.interval, phase, stop)
            )
            await asyncio.gather(*(t.workload.run(params.duration) for t in targets if t.workload))
            loaded_for = time.monotonic() - started
            phase[0] = "cool-down"
            await asyncio.sleep(params.cool_down)
            stop.set()
            await sampling
            last = sample_all(targets, set(backend_ports))  # at the end of the cool-down
            for target in targets:
                samples[target.name].append(
                    {
                        "t": round(time.monotonic() - started, 1),
                        "phase": "cool-down",
                        **last[target.name],
                    }
                )
            results["loaded_s"] = round(loaded_for, 1)
            results["loadavg_before"] = [round(x, 2) for x in loadavg_before]
            results["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
            results["targets"] = {}
            for target in targets:
                assert target.workload is not None
                entry: dict[str, Any] = {
                    "pid_nofile": target.info.get("nofile"),
                    "version": target.info.get("version"),
                    "workload": target.workload.summary(),
                    **analyse(samples[target.name], params),
                    "samples": samples[target.name],
                }
                if target.stats is not None:
                    try:
                        entry["self_report"] = await target.stats()
                    except Exception as exc:  # reported; the samples still stand
                        entry["self_report"] = {"error": f"{type(exc).__name__}: {exc}"}
                    entry["self_report"]["live_routes"] = params.routes + 5
                results["targets"][target.name] = entry
            for name, reason in unavailable.items():
                results["targets"][name] = {"status": "unavailable", "reason": reason}
        finally:
            for target in targets:
                for close in target.close:
                    await close()
    return results


def results_stem(ctx: Any) -> str:
    """``soak-quick`` for a ``--quick`` run, so that it never overwrites the full run's file."""
    return "soak-quick" if ctx.quick else "soak"


def _run_and_write(params: Params, results_dir: Path, name: str) -> dict[str, Any]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = asyncio.run(soak(Path(tmp), params))
    (results_dir / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    try:
        from bench._plot import plot_soak

        results["plot"] = str(plot_soak(results, results_dir / f"{name}.png").name)
    except ImportError as exc:  # nox -s bench installs matplotlib; a bare venv may not have it
        results["plot"] = f"not drawn: {exc}"
    return results


def run(ctx: Any) -> dict[str, Any]:
    params = Params.quick() if ctx.quick else Params()
    return _run_and_write(params, ctx.results_dir, results_stem(ctx))


def main(argv: list[str] | None = None) -> int:
    """One proxy's workload alone, for longer than the soak (not part of ``nox -s bench``):
    ``python -m bench.bench_soak --alone node --minutes 40`` writes
    ``bench/results/soak-node-alone.json`` and ``.png``, the slopes fitted over the second half
    of the load."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=main.__doc__)
    parser.add_argument("--alone", choices=Params.targets, required=True)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if args.minutes < 2:
        parser.error("--minutes: at least 2 (the slopes are fitted over the second half)")
    seconds = 60 * args.minutes
    params = Params(targets=(args.alone,), duration=seconds, warm_up=seconds / 2)
    results = _run_and_write(params, args.results_dir, f"soak-{args.alone}-alone")
    print(json.dumps({k: v for k, v in results["targets"][args.alone].items() if k != "samples"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
