"""Data-plane benchmark: direct vs configurable-http-proxy vs traefik vs eventproxy_dataplane.

One run measures every target on this machine, under the same load, so that only the *ratios*
mean anything (absolute numbers depend on the machine):

* a loopback backend (``bench._backend``) answering a small fixed response; "direct" is wrk
  straight at it, to show the headroom above the proxies;
* each proxy with the same 1,000 user routes (``/user/user0000/`` ... ``/user/user0999/``), all
  to that backend; wrk spreads GETs round-robin over the 1,000 prefixes;
* HTTP: ``wrk -t2 -c50`` for ``duration`` seconds per target, ``rounds`` rounds interleaved
  (direct, chp, traefik, dataplane, direct, ...) after a warm-up; reported: the median over
  rounds of req/s, p50 and p99 latency, and the per-round values;
* WebSocket: ``ws_round_trips`` echo round trips through each proxy, in 4 interleaved chunks
  (a new connection each, 50 warm-up round trips), pooled;
* a py-spy profile of the data plane during an extra, separate load run (sampling slows the
  target, so that run's req/s is reported apart and not used in the ratios).

A proxy that is not installed or not written yet is reported as ``unavailable`` (with the
reason) rather than failing the benchmark; a missing ``wrk`` is an error with an install hint.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench._load import LoadError, LoadResult, run_wrk
from bench._plot import plot_dataplane
from bench._profile import start_recording, summarize_file
from bench._report import markdown_summary
from bench._support import ToolMissing, require
from bench._targets import (
    ERROR,
    OK,
    Target,
    start_backend,
    start_chp,
    start_dataplane,
    start_traefik,
    user_routespecs,
)
from bench._ws import WebSocketError, round_trip_samples, summarize_round_trips

ROUTES = 1000
CONNECTIONS = 50
THREADS = 2
PATTERN = "/user/user%04d/api/status"
WS_PATH = "/user/user0500/api/kernels/ws"
# (name, extra CLI arguments) for each data-plane variant measured. "dataplane" is the default
# (asyncio, on uvloop when installed -- the `fast` extra -- with the asyncio-Protocol I/O edge);
# "-anyio" is the reference anyio-streams edge on the same loop; "-trio" that edge on trio.
QUIET = ["--log-level", "WARNING"]
DATAPLANE_VARIANTS: list[tuple[str, list[str]]] = [
    ("dataplane", ["--loop", "asyncio", "--io-edge", "auto", *QUIET]),
    ("dataplane-anyio", ["--loop", "asyncio", "--io-edge", "anyio", *QUIET]),
    ("dataplane-trio", ["--loop", "trio", *QUIET]),
]
MAX_ERROR_FRACTION = 0.001
WS_CHUNKS = 4


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


def _load(target: Target, duration: float) -> LoadResult:
    return run_wrk(
        target.base_url,
        pattern=PATTERN,
        count=ROUTES,
        duration=duration,
        connections=CONNECTIONS,
        threads=THREADS,
    )


def _check(result: LoadResult, target: Target) -> None:
    if result.requests == 0 or result.errors > MAX_ERROR_FRACTION * result.requests:
        raise LoadError(
            f"{target.name}: {result.errors} errors ({result.non_2xx} non-2xx/3xx) "
            f"in {result.requests} requests"
        )


def _http_summary(rounds: list[LoadResult]) -> dict[str, Any]:
    return {
        "rps": round(statistics.median(r.rps for r in rounds), 1),
        "p50_ms": _median([r.p50_ms for r in rounds]),
        "p99_ms": _median([r.p99_ms for r in rounds]),
        "rounds_rps": [r.rps for r in rounds],
        "rounds": [r.as_dict() for r in rounds],
    }


def _ratios(http: dict[str, dict[str, Any]], subject: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if subject not in http:
        return out
    for other in ("chp", "traefik", "direct", DATAPLANE_VARIANTS[0][0]):
        if other == subject:
            continue
        if other not in http:
            continue
        a, b = http[subject], http[other]
        per_round = [
            round(x / y, 3) for x, y in zip(a["rounds_rps"], b["rounds_rps"], strict=True) if y
        ]
        out[f"{subject}/{other}"] = {
            "rps": round(a["rps"] / b["rps"], 3),
            "rps_median_of_round_ratios": round(statistics.median(per_round), 3)
            if per_round
            else None,
            "rps_per_round": per_round,
            "p50_latency": round(a["p50_ms"] / b["p50_ms"], 3) if b["p50_ms"] else None,
            "p99_latency": round(a["p99_ms"] / b["p99_ms"], 3) if b["p99_ms"] else None,
        }
    return out


def _profile(target: Target, duration: float, results_dir: Path) -> dict[str, Any]:
    """py-spy on the data plane while wrk loads it; summary plus the raw stacks file."""
    assert target.pid is not None
    raw = results_dir / f"{target.name}-profile.collapsed.txt"
    recorder = start_recording(target.pid, raw, duration=duration)
    try:
        loaded = _load(target, duration)
    finally:
        output, _ = recorder.communicate(timeout=duration + 60)
    if recorder.returncode != 0 or not raw.exists():
        return {"status": ERROR, "reason": f"py-spy exited {recorder.returncode}: {output[-1000:]}"}
    return {
        "status": OK,
        "tool": "py-spy record --rate 250 --function --nonblocking (idle samples excluded)",
        "load_while_profiled": loaded.as_dict(),
        "raw_stacks": raw.name,
        **summarize_file(raw),
    }


def run(ctx: Any) -> dict[str, Any]:
    quick = bool(ctx.quick)
    # Short interleaved rounds: the machine is shared, and a burst of other work then skews one
    # round of every target alike instead of all rounds of one target.
    duration = 3.0 if quick else 6.0
    rounds = 1 if quick else 5
    profile_duration = 3.0 if quick else 10.0
    warmup = 1.0 if quick else 2.0
    ws_count = 500 if quick else 2000
    results_dir = Path(ctx.results_dir)
    require("wrk", "the HTTP load generator of this benchmark")  # clear error + install hint
    routespecs = user_routespecs(ROUTES)
    load_before = _loadavg()  # other work on the machine skews the numbers: recorded, not hidden

    with tempfile.TemporaryDirectory(prefix="bench-dataplane-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        backend = start_backend(stack, work)
        backend_url = backend.base_url
        print(f"   backend on {backend_url}; starting proxies with {ROUTES} routes", flush=True)
        targets: dict[str, Target] = {
            "direct": backend,
            "chp": start_chp(stack, work, routespecs, backend_url),
            "traefik": start_traefik(stack, work, routespecs, backend_url),
        }
        for name, args in DATAPLANE_VARIANTS:
            targets[name] = start_dataplane(
                stack, work, routespecs, backend_url, name=name, extra_args=args
            )
        for t in targets.values():
            print(f"   {t.name}: {t.status} {t.reason[:300]}", flush=True)

        measured: dict[str, list[LoadResult]] = {}
        for t in targets.values():
            if t.status != OK:
                continue
            try:
                _load(t, warmup)
            except LoadError as exc:
                t.status, t.reason = ERROR, f"warm-up failed: {exc}"[:2000]
            else:
                measured[t.name] = []
        for i in range(rounds):
            for name in list(measured):
                t = targets[name]
                try:
                    loaded = _load(t, duration)
                    _check(loaded, t)
                except LoadError as exc:
                    t.status, t.reason = ERROR, str(exc)[:2000]
                    del measured[name]
                    continue
                measured[name].append(loaded)
                print(f"   round {i + 1}/{rounds} {name}: {_line(loaded)}", flush=True)

        # Interleaved chunks (a new connection each), pooled: like the HTTP rounds, so a burst
        # of other work on the machine does not land on one target only.
        samples: dict[str, list[float]] = {name: [] for name in measured}
        websocket: dict[str, Any] = {}
        for _ in range(WS_CHUNKS):
            for name in list(samples):
                try:
                    samples[name] += round_trip_samples(
                        targets[name].port, WS_PATH, count=ws_count // WS_CHUNKS, warmup=50
                    )
                except (OSError, WebSocketError) as exc:
                    websocket[name] = {"status": ERROR, "reason": f"{type(exc).__name__}: {exc}"}
                    del samples[name]
        for name, values in samples.items():
            websocket[name] = summarize_round_trips(values).as_dict()

        profiles: dict[str, Any] = {}
        for name, _ in DATAPLANE_VARIANTS:
            if name in measured:
                try:
                    profiles[name] = _profile(targets[name], profile_duration, results_dir)
                except (OSError, ValueError, ToolMissing, LoadError) as exc:
                    profiles[name] = {"status": ERROR, "reason": f"{type(exc).__name__}: {exc}"}

    http = {name: _http_summary(r) for name, r in measured.items()}
    ratios: dict[str, Any] = {}
    for name, _ in DATAPLANE_VARIANTS:
        ratios.update(_ratios(http, name))
    result: dict[str, Any] = {
        "parameters": {
            "routes": ROUTES,
            "connections": CONNECTIONS,
            "threads": THREADS,
            "duration_s": duration,
            "rounds": rounds,
            "warmup_s": warmup,
            "path_pattern": PATTERN,
            "ws_path": WS_PATH,
            "ws_round_trips": ws_count,
            "cpus_shared_by_load_proxy_backend": _cpus(),
            "loadavg_1m_before": load_before,
            "git_head": _git_head(),
            "loadavg_1m_after": _loadavg(),
        },
        "targets": {name: t.describe() for name, t in targets.items()},
        "http": http,
        "websocket": websocket,
        "ratios": ratios,
        "profile": profiles,
        "finished_at_unix": round(time.time()),
    }
    png = plot_dataplane(result, results_dir / "dataplane.png")
    result["plot"] = png.name
    summary = results_dir / "dataplane.md"
    summary.write_text(markdown_summary(result))
    result["summary"] = summary.name
    return result


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


def _loadavg() -> float | None:
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
