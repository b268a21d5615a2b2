"""Data-plane benchmark: eventproxy's data plane against configurable-http-proxy and traefik.

One run measures a *matrix* on this machine, so that a reader can see whether a ratio depends
on the harness (absolute numbers are this machine's; only ratios within one cell mean anything):

* two backends: a real nginx (Debian ``nginx-light``, ``bench._nginx``: ``return 200`` of a fixed
  100-byte body) and the bench's own asyncio backend (``bench._backend``, 29 bytes; it also
  echoes WebSockets);
* two load shapes of ``wrk -c50``: ``-t1`` and ``-t2``;
* two path sets: one user's path (``/user/user0500/api/status``) and round-robin over all 1,000
  user prefixes;
* the targets, each holding the same 1,000 user routes to that backend: "direct" (wrk at the
  backend: the headroom), configurable-http-proxy, traefik, the standalone node ``eventproxy
  dataplane --config`` (uvloop; one target per HTTP parser the node offers), and EventProxy's
  in-process plane on a stock asyncio loop (``bench._inprocess_hub``).

Every cell (backend x threads x paths) runs ``rounds`` rounds; in each round the targets run one
after another (their order rotated per round), so compared numbers are adjacent in time. Then:
WebSocket echo round trips through each target (bench backend), a py-spy profile of each
eventproxy target during an extra load run (nginx, ``-t1``, one user's path: the issue's shape),
and the routing-table lookup cost at 100 / 1,000 / 10,000 routes (``bench_routing``). The
verdicts against the issue's targets are computed from the worst cell, never the best.

A proxy that is not installed or not written yet is reported as ``unavailable`` (with the
reason) rather than failing the benchmark; a missing ``wrk`` is an error with an install hint.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import bench_routing
from bench._inprocess_hub import PARSER_TRAIT
from bench._load import LoadError, LoadResult, run_wrk
from bench._matrix import (
    BACKENDS,
    INPROCESS_MIN_RATIO,
    ONE_USER,
    PATHS,
    STANDALONE_MIN_RATIO,
    THREADS,
    Shape,
    cell_ratios,
    cell_summary,
    lookup_verdict,
    rotated,
    shapes,
    throughput_verdict,
    websocket_verdict,
)
from bench._profile import start_recording, summarize_file
from bench._support import ToolMissing, require
from bench._targets import (
    ERROR,
    OK,
    UNAVAILABLE,
    Target,
    node_parsers,
    start_backend,
    start_chp,
    start_dataplane,
    start_inprocess,
    start_nginx_backend,
    start_traefik,
    user_routespecs,
)
from bench._ws import WebSocketError, round_trip_samples, summarize_round_trips

KINDS = ("direct", "chp", "traefik", "node", "inprocess")
QUIET = ["--log-level", "WARNING"]
WS_PATH = "/user/user%04d/api/kernels/ws"  # the one user of the "one" path set
WS_CHUNKS = 4
MAX_ERROR_FRACTION = 0.001
PROFILE_SHAPE = ("nginx", 1, "one")  # the issue's own shape; bench backend if no nginx


@dataclass(frozen=True)
class Plan:
    """What one run measures. :meth:`full` is ``nox -s bench``; :meth:`quick` is ``--quick``."""

    routes: int = 1000
    rounds: int = 3
    duration: float = 3.0
    warmup: float = 2.0
    connections: int = 50
    backends: tuple[str, ...] = BACKENDS
    threads: tuple[int, ...] = THREADS
    paths: tuple[str, ...] = PATHS
    kinds: tuple[str, ...] = KINDS
    parsers: tuple[str, ...] = ()  # only these of the detected parsers; () = every one
    ws_round_trips: int = 2000
    profile_duration: float = 10.0  # 0: no profile
    lookup: str = "full"  # "full" (100 / 1,000 / 10,000 routes), "quick" (100 / 1,000), ""
    plot: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def quick(cls) -> Plan:
        return cls(rounds=1, duration=1.0, warmup=1.0, ws_round_trips=200, profile_duration=2.0)

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown target kinds {sorted(unknown)}; known: {KINDS}")
        if self.rounds < 1 or self.duration < 1 or self.routes < 1:
            raise ValueError("rounds, duration (s) and routes must all be >= 1")
        if self.lookup not in ("full", "quick", ""):
            raise ValueError(f"lookup must be 'full', 'quick' or '', got {self.lookup!r}")


@dataclass(frozen=True)
class Variant:
    """One eventproxy target: a standalone node or an in-process hub, with its parser."""

    name: str
    kind: str  # "node" | "inprocess"
    parser: str  # "" = the default (the only one before --parser exists)


def eventproxy_variants(kinds: Sequence[str]) -> tuple[list[Variant], dict[str, Any]]:
    """The node and in-process targets this commit can run, and what was detected."""
    detected: dict[str, Any] = {}
    try:
        parsers = node_parsers()
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
        parsers = []
        detected["node_parsers_error"] = f"{type(exc).__name__}: {exc}"[:500]
    detected["node_parsers"] = parsers or ["h11 (no --parser option at this commit)"]
    detected["eventproxy_parser_trait"] = _eventproxy_has_parser_trait()
    out: list[Variant] = []
    if "node" in kinds:
        out += [Variant(f"node-{p}", "node", p) for p in parsers] or [
            Variant("node-h11", "node", "")
        ]
    if "inprocess" in kinds:
        if parsers and detected["eventproxy_parser_trait"]:
            out += [Variant(f"inprocess-{p}", "inprocess", p) for p in parsers]
        else:
            out.append(Variant("inprocess", "inprocess", ""))
    return out, detected


def _eventproxy_has_parser_trait() -> bool:
    try:
        from eventproxy import EventProxy
    except Exception:  # reported as unavailable by the target itself
        return False
    return PARSER_TRAIT in EventProxy.class_trait_names()


# -- starting everything ----------------------------------------------------------------------
def start_targets(
    stack: ExitStack, work: Path, plan: Plan, variants: Sequence[Variant]
) -> dict[str, dict[str, Target]]:
    """backend -> target name -> Target, every proxy with ``plan.routes`` routes to it."""
    routespecs = user_routespecs(plan.routes)
    out: dict[str, dict[str, Target]] = {}
    for backend in plan.backends:
        home = work / backend
        home.mkdir()
        direct = (
            start_nginx_backend(stack, home) if backend == "nginx" else start_backend(stack, home)
        )
        targets: dict[str, Target] = {"direct": direct}
        out[backend] = targets
        if direct.status != OK:
            print(f"   backend {backend}: {direct.status} {direct.reason}", flush=True)
            continue
        url = direct.base_url
        print(f"   backend {backend} on {url}; proxies with {plan.routes} routes", flush=True)
        if "chp" in plan.kinds:
            targets["chp"] = start_chp(stack, home, routespecs, url)
        if "traefik" in plan.kinds:
            targets["traefik"] = start_traefik(stack, home, routespecs, url)
        for v in variants:
            if v.kind == "node":
                args = [*(["--parser", v.parser] if v.parser else []), *QUIET]
                t = start_dataplane(stack, home, routespecs, url, name=v.name, extra_args=args)
            else:
                t = start_inprocess(stack, home, routespecs, url, name=v.name, parser=v.parser)
            targets[v.name] = t
        for t in targets.values():
            print(f"   {backend}/{t.name}: {t.status} {t.reason[:300]}", flush=True)
    return out


# -- measuring --------------------------------------------------------------------------------
def _load(target: Target, shape: Shape, plan: Plan, duration: float) -> LoadResult:
    pattern, count = shape.request(plan.routes)
    return run_wrk(
        target.base_url,
        pattern=pattern,
        count=count,
        duration=duration,
        connections=plan.connections,
        threads=shape.threads,
    )


def _check(result: LoadResult, name: str) -> None:
    if result.requests == 0 or result.errors > MAX_ERROR_FRACTION * result.requests:
        raise LoadError(
            f"{name}: {result.errors} errors ({result.non_2xx} non-2xx/3xx) "
            f"in {result.requests} requests"
        )


def measure_matrix(
    targets: dict[str, dict[str, Target]], plan: Plan, cells: Sequence[Shape]
) -> tuple[dict[str, dict[str, list[dict[str, Any]]]], dict[str, dict[str, str]]]:
    """Rounds over every cell; per cell the targets alternate. (results, errors) by cell key."""
    live = {b: _measured(ts, plan) for b, ts in targets.items()}
    if plan.warmup >= 1:
        # per path set: node's JIT (CHP) and every pool warm on what the rounds will send
        for backend, names in live.items():
            for name in list(names):
                try:
                    for paths in plan.paths:
                        warm = Shape(backend, max(plan.threads), paths)
                        _load(targets[backend][name], warm, plan, plan.warmup)
                except LoadError as exc:
                    t = targets[backend][name]
                    t.status, t.reason = ERROR, f"warm-up failed: {exc}"[:2000]
                    names.remove(name)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {c.key: {} for c in cells}
    errors: dict[str, dict[str, str]] = {c.key: {} for c in cells}
    for i in range(plan.rounds):
        for cell in cells:
            for name in rotated(live.get(cell.backend, []), i):
                if name in errors[cell.key]:
                    continue  # failed in an earlier round: the cell reports the error
                target = targets[cell.backend][name]
                pid = target.pid if name != "direct" else None
                cpu_before = cpu_seconds(pid)
                try:
                    loaded = _load(target, cell, plan, plan.duration)
                    _check(loaded, name)
                except LoadError as exc:
                    errors[cell.key][name] = str(exc)[:2000]
                    results[cell.key].pop(name, None)
                    continue
                cpu_after = cpu_seconds(pid)
                row: dict[str, Any] = loaded.as_dict()
                if cpu_before is not None and cpu_after is not None and cpu_after > cpu_before:
                    row["proxy_cpu_s"] = round(cpu_after - cpu_before, 3)
                    row["req_per_cpu_s"] = round(loaded.requests / (cpu_after - cpu_before), 1)
                results[cell.key].setdefault(name, []).append(row)
                print(
                    f"   round {i + 1}/{plan.rounds} {cell.key} {name}: {_line(loaded)}",
                    flush=True,
                )
    return results, errors


def ws_path(plan: Plan) -> str:
    return WS_PATH % min(ONE_USER, plan.routes - 1)


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of process ``pid`` (all its threads) so far, from /proc."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _measured(targets: dict[str, Target], plan: Plan) -> list[str]:
    """The targets that run and are to be measured ("direct" only if the plan asks for it)."""
    return [
        n
        for n, t in targets.items()
        if t.status == OK and (n != "direct" or "direct" in plan.kinds)
    ]


def measure_websocket(targets: dict[str, Target], plan: Plan) -> dict[str, Any]:
    """Interleaved chunks (a new connection each) through every target, pooled."""
    count = plan.ws_round_trips
    samples: dict[str, list[float]] = {n: [] for n in _measured(targets, plan)}
    out: dict[str, Any] = {}
    for _ in range(WS_CHUNKS):
        for name in list(samples):
            try:
                samples[name] += round_trip_samples(
                    targets[name].port, ws_path(plan), count=max(1, count // WS_CHUNKS), warmup=50
                )
            except (OSError, WebSocketError) as exc:
                out[name] = {"status": ERROR, "reason": f"{type(exc).__name__}: {exc}"}
                del samples[name]
    for name, values in samples.items():
        out[name] = summarize_round_trips(values).as_dict()
    return out


def profile_target(
    target: Target, shape: Shape, plan: Plan, results_dir: Path, label: str
) -> dict[str, Any]:
    """py-spy on one target's process while wrk loads it; summary plus the raw stacks file."""
    assert target.pid is not None
    raw = results_dir / f"dataplane-profile-{label}.collapsed.txt"
    recorder = start_recording(target.pid, raw, duration=plan.profile_duration)
    try:
        loaded = _load(target, shape, plan, plan.profile_duration)
    finally:
        output, _ = recorder.communicate(timeout=plan.profile_duration + 60)
    if recorder.returncode != 0 or not raw.exists():
        return {"status": ERROR, "reason": f"py-spy exited {recorder.returncode}: {output[-1000:]}"}
    return {
        "status": OK,
        "tool": "py-spy record --rate 250 --function --nonblocking (idle samples excluded)",
        "shape": shape.describe(plan.routes),
        "load_while_profiled": loaded.as_dict(),
        "raw_stacks": raw.name,
        **summarize_file(raw, top=15),
    }


# -- the run ----------------------------------------------------------------------------------
def run_plan(plan: Plan, results_dir: Path) -> dict[str, Any]:
    require("wrk", "the HTTP load generator of this benchmark")  # clear error + install hint
    load_before = _loadavg()  # other work on the machine skews the numbers: recorded, not hidden
    started = time.time()
    variants, detected = eventproxy_variants(plan.kinds)
    if plan.parsers:
        variants = [v for v in variants if not v.parser or v.parser in plan.parsers]
    cells = shapes(plan.backends, plan.threads, plan.paths)
    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp, ExitStack() as stack:
        targets = start_targets(stack, Path(tmp), plan, variants)
        raw, errors = measure_matrix(targets, plan, cells)
        websocket: dict[str, Any] = {}
        if "bench" in targets and plan.ws_round_trips:
            websocket = measure_websocket(targets["bench"], plan)
        profiles = _profiles(targets, variants, plan, results_dir)
    matrix: dict[str, Any] = {}
    for cell in cells:
        http = {name: cell_summary(r) for name, r in raw[cell.key].items()}
        matrix[cell.key] = {
            "shape": cell.describe(plan.routes),
            "http": http,
            "errors": errors[cell.key],
            "ratios": cell_ratios(http),
        }
    lookup = bench_routing.run(_Quick(plan.lookup == "quick")) if plan.lookup else {}
    result: dict[str, Any] = {
        "parameters": {
            **{k: v for k, v in asdict(plan).items() if k != "extra"},
            **plan.extra,
            "cells": [c.key for c in cells],
            "ws_path": ws_path(plan),
            "max_error_fraction": MAX_ERROR_FRACTION,
            "cpus_shared_by_load_proxy_backend": _cpus(),
            "git_head": _git_head(),
            "detected": detected,
            "loadavg_before": load_before,
            "loadavg_after": _loadavg(),
            "started_at_unix": round(started),
            "finished_at_unix": round(time.time()),
        },
        "targets": {
            backend: {name: t.describe() for name, t in ts.items()}
            for backend, ts in targets.items()
        },
        "matrix": matrix,
        "websocket": websocket,
        "profile": profiles,
        "lookup": lookup,
    }
    result["verdicts"] = verdicts(result, variants)
    if plan.plot:
        from bench._plot import plot_dataplane
        from bench._report import markdown_summary

        result["plot"] = plot_dataplane(result, results_dir / "dataplane.png").name
        summary = results_dir / "dataplane.md"
        summary.write_text(markdown_summary(result))
        result["summary"] = summary.name
    return result


def _profiles(
    targets: dict[str, dict[str, Target]], variants: Sequence[Variant], plan: Plan, out: Path
) -> dict[str, Any]:
    if plan.profile_duration < 1:
        return {}
    backend = PROFILE_SHAPE[0] if PROFILE_SHAPE[0] in targets else next(iter(targets), None)
    if backend is None:
        return {}
    shape = Shape(backend, PROFILE_SHAPE[1], PROFILE_SHAPE[2])
    profiles: dict[str, Any] = {}
    for v in variants:
        t = targets[backend].get(v.name)
        if t is None or t.status != OK:
            continue
        try:
            profiles[v.name] = profile_target(t, shape, plan, out, v.name)
        except (OSError, ValueError, ToolMissing, LoadError, subprocess.SubprocessError) as exc:
            profiles[v.name] = {"status": ERROR, "reason": f"{type(exc).__name__}: {exc}"}
    return profiles


def verdicts(result: dict[str, Any], variants: Sequence[Variant]) -> dict[str, Any]:
    """The issue's targets, each judged on the worst cell of this run."""
    matrix = result["matrix"]
    out: dict[str, Any] = {}
    for v in variants:
        if v.kind == "node":
            out[f"{v.name} >= 2x chp"] = throughput_verdict(
                matrix, v.name, minimum=STANDALONE_MIN_RATIO, p99_not_above_chp=True
            )
        else:
            out[f"{v.name} >= 1.5x chp"] = throughput_verdict(
                matrix, v.name, minimum=INPROCESS_MIN_RATIO, p99_not_above_chp=False
            )
        out[f"{v.name} websocket p50 <= chp"] = websocket_verdict(result["websocket"], v.name)
    if result["lookup"]:
        out["lookup flat 100 -> 10,000 routes"] = lookup_verdict(result["lookup"])
    out["gap to traefik"] = traefik_gap(matrix, [v.name for v in variants])
    return out


def traefik_gap(matrix: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """Per target, the range over cells of its req/s relative to traefik; and traefik/CHP."""
    out: dict[str, Any] = {}
    for name in [*names, "traefik"]:
        key = f"{name}/traefik" if name != "traefik" else "traefik/chp"
        values = [
            c["ratios"][key]["rps"]
            for c in matrix.values()
            if key in c["ratios"] and c["ratios"][key]["rps"] is not None
        ]
        if values:
            out[key] = {"min": min(values), "max": max(values), "cells": len(values)}
    return out


@dataclass(frozen=True)
class _Quick:
    quick: bool


def run(ctx: Any) -> dict[str, Any]:
    plan = Plan.quick() if ctx.quick else Plan.full()
    return run_plan(plan, Path(ctx.results_dir))


def _line(r: LoadResult) -> str:
    return f"{r.rps:.0f} req/s, p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms, {r.errors} errors"


def _git_head() -> str | None:
    """The commit measured (the data plane's code is the working tree's, which may differ)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


__all__ = ["UNAVAILABLE", "Plan", "run", "run_plan"]
