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
from bench.bench_soak import Params, analyse, fit, second_half, soak

from support.chp import require_chp
from support.procnet import fds_by_kind

TINY = {
    "duration": 4.0,
    "interval": 0.5,
    "cool_down": 6.0,  # longer than the backends' 5 s keep-alive: idle sockets get closed
    "warm_up": 0.0,
    "precondition_changes": 12,
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


def test_analyse_separates_settling_from_a_trend_and_fds_by_kind() -> None:
    """RSS that rises early and then stays (memory settling) has a flat second half; a steady
    rise keeps its slope there. Descriptors are fitted per kind too."""

    def point(t: float, rss: float, backend: int, client: int) -> dict[str, object]:
        kinds = {"backend": backend, "client": client, "file": 5}
        return {
            "t": t * 60,
            "phase": "load",
            "rss_mb": rss,
            "fds": sum(kinds.values()),
            "fd_kinds": kinds,
            "backend_sockets": {},
        }

    settling = [point(t, min(10.0 + t, 14.0), 256, 64 - t) for t in range(10)]
    report = analyse(settling, Params(warm_up=0))
    assert report["rss_mb"]["slope_per_min"] > 0.3
    assert report["rss_mb"]["second_half"] == {"slope_per_min": 0.0, "r2": 0.0}
    assert report["fd_kinds"]["backend"] == {"mean": 256.0, "slope_per_min": 0.0, "r2": 0.0}
    assert report["fd_kinds"]["client"]["slope_per_min"] == -1.0
    leaking = analyse([point(t, 10.0 + t, 256, 64) for t in range(10)], Params(warm_up=0))
    assert leaking["rss_mb"]["second_half"] == {"slope_per_min": 1.0, "r2": 1.0}
    # the full run's shape: slopes over the minutes after a loaded warm-up, the fit from the
    # first minute (settling included) beside them
    steady = analyse(settling, Params(warm_up=300, settle_from=60))
    assert steady["rss_mb"]["slope_per_min"] == 0.0
    assert steady["rss_mb"]["from_first_minute"]["slope_per_min"] > 0.3
    still_leaking = analyse([point(t, 10.0 + t, 256, 64) for t in range(10)], Params(warm_up=300))
    assert still_leaking["rss_mb"]["slope_per_min"] == 1.0
    assert second_half([(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]) == [(1.0, 2.0), (2.0, 3.0)]


def test_fds_by_kind_of_this_process(tmp_path: Path) -> None:
    import os
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    backend = socket.create_server(("127.0.0.1", 0))
    with (
        listener,
        backend,
        socket.create_connection(("127.0.0.1", port)) as client,
        socket.create_connection(("127.0.0.1", backend.getsockname()[1])) as to_backend,
        open(tmp_path / "f", "w"),
    ):
        accepted, _ = listener.accept()
        reading, writing = os.pipe()
        try:
            kinds = fds_by_kind(os.getpid(), {backend.getsockname()[1]}, {port})
        finally:
            accepted.close()
            os.close(reading)
            os.close(writing)
            assert to_backend.fileno() >= 0 and client.fileno() >= 0
    assert kinds["listen"] >= 2 and kinds["backend"] == 1 and kinds["client"] == 1
    assert kinds["pipe"] >= 2 and kinds["file"] >= 1
    # the connecting end of the client connection (an ephemeral local port) is neither
    assert kinds["tcp_other"] >= 1


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


def test_alone_refuses_a_run_too_short_to_fit_or_an_unknown_proxy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.bench_soak import main

    for argv, names in (
        (["--alone", "node", "--minutes", "1"], "--minutes"),
        (["--alone", "traefik"], "--alone"),
    ):
        with pytest.raises(SystemExit) as exited:
            main(argv)
        assert exited.value.code == 2
        assert names in capsys.readouterr().err
