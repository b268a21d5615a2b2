"""Smoke test of the soak benchmark's harness (``nox -s bench -- soak``), in seconds.

The real soak runs for ten minutes; this one runs the same code for a few seconds with a
handful of routes: the backends bind their ports, the stand-in hub and the standalone node
route, churn, HTTP and WebSocket traffic are checked answer by answer (zero errors), the
samples come from /proc, and the analysis fits lines. The pure pieces are checked on their own.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from bench.bench_soak import Params, analyse, fit, soak

from support.chp import require_chp

TINY = {
    "duration": 4.0,
    "interval": 0.5,
    "cool_down": 6.0,  # longer than the backends' 5 s keep-alive: idle sockets get closed
    "warm_up": 0.0,
    "routes": 8,
    "spare_ports": 4,
    "backend_processes": 1,
    "changes_per_s": 4.0,
    "http_per_s": 20.0,
    "ws_per_s": 3.0,
}


def test_fit_slope_and_r2() -> None:
    assert fit([(0, 1.0), (1, 3.0), (2, 5.0)]) == {"slope_per_min": 2.0, "r2": 1.0}
    flat = fit([(0, 5.0), (1, 5.0), (2, 5.0)])
    assert flat == {"slope_per_min": 0.0, "r2": 0.0}
    assert fit([(0, 1.0)]) == {"slope_per_min": None, "r2": None}


def test_analyse_reports_close_wait_after_the_cool_down() -> None:
    def point(t: float, phase: str, fds: int, close_wait: int) -> dict[str, object]:
        sockets = {"CLOSE_WAIT": close_wait} if close_wait else {}
        return {"t": t, "phase": phase, "rss_mb": 10.0, "fds": fds, "backend_sockets": sockets}

    samples = [point(t * 60, "load", 100 + 10 * t, t) for t in range(5)]
    samples.append(point(330, "cool-down", 90, 7))
    report = analyse(samples, Params(warm_up=0))
    assert report["fds"]["slope_per_min"] == 10.0 and report["fds"]["r2"] == 1.0
    assert report["backend_close_wait"] == {"max_under_load": 4, "after_cool_down": 7}


def _check(result: dict[str, object], names: set[str]) -> None:
    targets = result["targets"]
    assert isinstance(targets, dict) and set(targets) == names
    for name, target in targets.items():
        load = target["workload"]
        assert load["errors"] == 0, (name, load["error_samples"])
        assert load["http_ok"] > 20 and load["route_changes"] > 4, (name, load)
        assert load["ws_clean"] + load["ws_abrupt"] > 0 and load["ws_stopped"] > 0, (name, load)
        assert [s["phase"] for s in target["samples"]].count("cool-down") >= 2
        assert target["fds"]["max"] > 0 and target["rss_mb"]["end"] > 0
        assert target["backend_close_wait"]["after_cool_down"] == 0, name


@pytest.mark.services
def test_soak_harness_against_eventproxy_and_a_node(tmp_path: Path) -> None:
    params = Params(**TINY, targets=("eventproxy", "node"))  # type: ignore[arg-type]
    result = asyncio.run(soak(tmp_path, params))
    _check(result, {"eventproxy", "node"})
    hub = result["targets"]["eventproxy"]["self_report"]  # type: ignore[index]
    assert hub["routes"] == hub["live_routes"]  # 8 user routes + 5 to the stopped server
    assert hub["activity"] <= hub["routes"] and hub["counters"] <= hub["routes"]
    # every WebSocket upgrade to the stopped server was answered, then the connection closed
    for target in result["targets"].values():  # type: ignore[attr-defined]
        assert target["workload"]["ws_stopped_closed_by_proxy"] == target["workload"]["ws_stopped"]


@pytest.mark.services
def test_soak_harness_against_configurable_http_proxy(tmp_path: Path) -> None:
    require_chp(install=True)
    params = Params(**TINY, targets=("chp",))  # type: ignore[arg-type]
    _check(asyncio.run(soak(tmp_path, params)), {"chp"})
