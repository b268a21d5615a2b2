"""Smoke tests of the benchmark harness: each piece starts, answers, and is parsed right.

The real benchmark (``nox -s bench``) runs for minutes; these take seconds: the loopback
backend answers HTTP and WebSocket, wrk's report is parsed, CHP and traefik route a few
prefixes to the backend, and py-spy's collapsed stacks are summarised.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from bench._load import LoadError, parse_wrk_output, run_wrk
from bench._profile import package_of, parse_collapsed, summarize
from bench._targets import (
    OK,
    Target,
    start_backend,
    start_chp,
    start_traefik,
    traefik_dynamic,
    user_routespecs,
)
from bench._ws import measure_round_trips, percentile

from support import require_binary
from support.chp import require_chp, running_chp
from support.tools import INSTALL_HINTS, ToolMissing, require
from support.traefik import require_traefik

ROUTES = user_routespecs(3)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Target]:
    with ExitStack() as stack:
        yield start_backend(stack, tmp_path)


def get(port: int, path: str, *, times: int = 1) -> list[tuple[int, bytes]]:
    """``times`` GETs on one kept-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        out = []
        for _ in range(times):
            conn.request("GET", path)
            resp = conn.getresponse()
            out.append((resp.status, resp.read()))
        return out
    finally:
        conn.close()


# -- pure pieces -----------------------------------------------------------------------------
def test_user_routespecs_and_traefik_config() -> None:
    assert ROUTES == ["/user/user0000/", "/user/user0001/", "/user/user0002/"]
    doc = traefik_dynamic(ROUTES[:1], "http://127.0.0.1:1")
    (name,) = doc["http"]["routers"]
    assert doc["http"]["routers"][name] == {
        "rule": "PathPrefix(`/user/user0000/`)",
        "service": name,
    }
    assert doc["http"]["services"][name]["loadBalancer"]["servers"] == [
        {"url": "http://127.0.0.1:1"}
    ]
    with pytest.raises(ValueError, match="route count"):
        user_routespecs(0)


def test_parse_wrk_report() -> None:
    raw = {
        "requests": 1000, "duration_us": 2_000_000, "bytes": 1, "errors_connect": 0,
        "errors_read": 0, "errors_write": 0, "errors_status": 2, "errors_timeout": 1,
        "mean_us": 1500.0, "stdev_us": 1.0, "max_us": 9000, "p50_us": 1200, "p90_us": 2000,
        "p99_us": 5000, "p999_us": 8000,
    }  # fmt: skip
    result = parse_wrk_output(f"Running 2s test\nWRK_JSON {json.dumps(raw)}\nRequests/sec: 500\n")
    assert result.rps == 500.0
    assert (result.p50_ms, result.p99_ms) == (1.2, 5.0)
    assert (result.errors, result.non_2xx) == (3, 2)
    with pytest.raises(LoadError, match="no WRK_JSON"):
        parse_wrk_output("Requests/sec: 500\n")


def test_run_wrk_refuses_non_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_wrk("http://example.com:80", pattern="/", count=1, duration=1)


def test_missing_tool_names_an_install_hint() -> None:
    with pytest.raises(ToolMissing, match="'no-such-tool-xyz' not found"):
        require("no-such-tool-xyz")
    assert "apt-get install -y wrk" in str(ToolMissing("wrk"))


def test_profile_summary() -> None:
    lines = [
        "main (app.py:1);run (asyncio/base_events.py:10);feed (h11/_connection.py:5) 6\n",
        "main (app.py:1);run (asyncio/base_events.py:10);handle "
        "(eventproxy_dataplane/_proxy.py:3);send (socket.py:9) 4\n",
    ]
    summary = summarize(parse_collapsed(lines))
    assert summary["samples"] == 10
    assert summary["self_by_package_pct"] == {"h11": 60.0, "socket": 40.0}
    assert summary["inclusive_by_package_pct"]["eventproxy_dataplane"] == 40.0
    assert summary["top_self_pct"]["feed (_connection.py)"] == 60.0
    assert package_of("x (anyio/streams/memory.py:3)") == "anyio"
    with pytest.raises(ValueError, match="line 1 is malformed"):
        parse_collapsed(["no count here\n"])
    assert parse_collapsed([" 14\n"]) == [(["(no stack: sample not unwound)"], 14)]


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([7.0], 99) == 7.0


# -- real processes ---------------------------------------------------------------------------
@pytest.mark.services
def test_backend_answers_http_and_websocket(backend: Target) -> None:
    answers = get(backend.port, "/user/user0001/api/status", times=3)
    assert [status for status, _ in answers] == [200, 200, 200]
    assert answers[0][1] == b"hello from the bench backend\n"
    rtt = measure_round_trips(backend.port, "/ws", count=20, warmup=2, size=300)
    assert rtt.count == 20
    assert 0 < rtt.p50_us <= rtt.p99_us <= rtt.max_us


@pytest.mark.services
def test_wrk_loads_the_backend(backend: Target) -> None:
    require_binary("wrk", INSTALL_HINTS["wrk"])
    result = run_wrk(
        backend.base_url, pattern="/user/user%04d/", count=10, duration=1, connections=4, threads=1
    )
    assert result.requests > 100
    assert result.errors == 0
    assert 0 < result.p50_ms <= result.p99_ms


@pytest.mark.services
def test_chp_routes_to_the_backend(backend: Target, tmp_path: Path) -> None:
    require_chp()
    with ExitStack() as stack:
        chp = start_chp(stack, tmp_path, ROUTES, backend.base_url)
        assert chp.status == OK, chp.reason
        assert chp.info["routes"] == len(ROUTES)
        assert get(chp.port, "/user/user0002/tree")[0][0] == 200
        assert get(chp.port, "/user/nobody/")[0][0] == 404
        assert measure_round_trips(chp.port, "/user/user0001/ws", count=5, warmup=1).count == 5


@pytest.mark.services
def test_traefik_routes_to_the_backend(backend: Target, tmp_path: Path) -> None:
    require_traefik()
    with ExitStack() as stack:
        traefik = start_traefik(stack, tmp_path, ROUTES, backend.base_url)
        assert traefik.status == OK, traefik.reason
        assert get(traefik.port, "/user/user0000/lab")[0][0] == 200
        assert get(traefik.port, "/user/nobody/")[0][0] == 404
        assert measure_round_trips(traefik.port, "/user/user0001/ws", count=5, warmup=1).count == 5


@pytest.mark.services
def test_chp_launcher_rest_api(backend: Target, tmp_path: Path) -> None:
    require_chp()
    with running_chp(tmp_path) as chp:
        chp.add_route("/user/alice/", backend.base_url, {"user": "alice"})
        routes = chp.routes()
        assert routes["/user/alice"]["target"] == backend.base_url
        assert routes["/user/alice"]["user"] == "alice"
        assert get(chp.port, "/user/alice/lab")[0][0] == 200
        chp.delete_route("/user/alice")
        chp.delete_route("/user/alice")  # idempotent
        assert chp.routes() == {}
        assert get(chp.port, "/user/alice/lab")[0][0] == 404
        with pytest.raises(ValueError, match="must start with '/'"):
            chp.add_route("user/bob", backend.base_url)
    assert chp.child.proc.poll() is not None  # stopped by PID
