"""Smoke tests of the benchmark harness: each piece starts, answers, and is parsed right.

The real benchmark (``nox -s bench``) runs for minutes; these take seconds: the loopback
backend and nginx answer, wrk's report is parsed, CHP and traefik route a few prefixes to the
backend, EventProxy's in-process plane runs on stock asyncio, py-spy's collapsed stacks are
summarised, the matrix's ratios and verdicts are computed right -- and one small end-to-end run
of the whole matrix (both backends x wrk -t1/-t2 x one path/all prefixes, CHP, the node and the
in-process plane, 1 s per cell) produces every cell.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from bench._load import LoadError, parse_wrk_output, run_wrk
from bench._matrix import (
    Shape,
    cell_ratios,
    cell_summary,
    lookup_verdict,
    rotated,
    shapes,
    throughput_verdict,
)
from bench._nginx import BODY as NGINX_BODY
from bench._nginx import NGINX_HINT, Nginx, nginx_binary, nginx_config
from bench._profile import package_of, parse_collapsed, summarize
from bench._report import markdown_summary
from bench._targets import (
    OK,
    Target,
    parsers_in_help,
    start_backend,
    start_chp,
    start_inprocess,
    start_traefik,
    traefik_dynamic,
    user_routespecs,
)
from bench._ws import measure_round_trips, percentile
from bench.bench_dataplane import Plan, run_plan

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


# -- the matrix: pure pieces ------------------------------------------------------------------
def test_nginx_config(tmp_path: Path) -> None:
    text = nginx_config(tmp_path, 8123)
    assert "daemon off;" in text
    assert "listen 127.0.0.1:8123 " in text
    assert f"pid {tmp_path}/nginx.pid;" in text
    assert f"client_body_temp_path {tmp_path}/temp/client_body;" in text
    assert "keepalive_requests 10000000;" in text  # a proxy's pooled connection is never closed
    assert 'return 200 "' + "x" * 99 + '\\n";' in text
    assert len(NGINX_BODY) == 100
    with pytest.raises(ValueError, match="port"):
        nginx_config(tmp_path, 0)
    with pytest.raises(ValueError, match="cannot hold"):
        nginx_config(tmp_path / "a b", 8123)


def test_parser_detection_from_help() -> None:
    help_text = "  --parser {h11,httptools,auto}\n                        HTTP parser\n"
    assert parsers_in_help(help_text) == ["h11", "httptools"]
    assert parsers_in_help("  --loop {asyncio,trio}\n") == []


def test_shapes_and_rotation() -> None:
    cells = shapes()
    assert [c.key for c in cells] == [
        "nginx/t1/one", "nginx/t1/all", "nginx/t2/one", "nginx/t2/all",
        "bench/t1/one", "bench/t1/all", "bench/t2/one", "bench/t2/all",
    ]  # fmt: skip
    assert Shape("nginx", 1, "one").request(1000) == ("/user/user0500/api/status", 1)
    assert Shape("nginx", 1, "one").request(100) == ("/user/user0099/api/status", 1)
    assert Shape("bench", 2, "all").request(1000) == ("/user/user%04d/api/status", 1000)
    with pytest.raises(ValueError, match="backend"):
        Shape("apache", 1, "one")
    with pytest.raises(ValueError, match="threads"):
        Shape("nginx", 0, "one")
    assert rotated(["a", "b", "c"], 0) == ["a", "b", "c"]
    assert rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    assert rotated([], 3) == []


def _rounds(*rps: float, p99: float = 10.0) -> list[dict[str, float]]:
    return [{"rps": r, "p50_ms": 1.0, "p99_ms": p99} for r in rps]


def test_ratios_and_verdicts_take_the_worst_cell() -> None:
    good = {
        "chp": cell_summary(_rounds(100, 200, 100, p99=20)),
        "node": cell_summary(_rounds(300, 380, 250, p99=10)),
        "direct": cell_summary(_rounds(9000, 9000, 9000, p99=1)),
    }
    r = cell_ratios(good)
    assert set(r) == {"node/chp"}  # direct is never a subject; no traefik measured
    assert r["node/chp"]["rps"] == 3.0  # ratio of medians: 300 / 100
    assert r["node/chp"]["rps_per_round"] == [3.0, 1.9, 2.5]
    assert r["node/chp"]["rps_median_of_round_ratios"] == 2.5
    assert r["node/chp"]["p99_latency"] == 0.5
    matrix = {"a": {"ratios": r}}
    verdict = throughput_verdict(matrix, "node", minimum=2.0, p99_not_above_chp=True)
    assert verdict["met"] and verdict["worst_rps_ratio"] == 2.5
    # a second cell at 1.9x fails the target, however good the first one is
    bad = {
        "chp": cell_summary(_rounds(100, p99=20)),
        "node": cell_summary(_rounds(190, p99=10)),
    }
    matrix["b"] = {"ratios": cell_ratios(bad)}
    verdict = throughput_verdict(matrix, "node", minimum=2.0, p99_not_above_chp=True)
    assert not verdict["met"] and verdict["worst_rps_ratio"] == 1.9
    # fast enough but with a worse tail than CHP: not met either
    slow_tail = {"chp": cell_summary(_rounds(100, p99=5)), "node": cell_summary(_rounds(400))}
    matrix = {"c": {"ratios": cell_ratios(slow_tail)}}
    assert not throughput_verdict(matrix, "node", minimum=2.0, p99_not_above_chp=True)["met"]
    assert throughput_verdict(matrix, "node", minimum=2.0, p99_not_above_chp=False)["met"]
    # a cell where the subject was not measured is "not shown", not skipped
    matrix["d"] = {"ratios": {}}
    verdict = throughput_verdict(matrix, "node", minimum=2.0, p99_not_above_chp=False)
    assert not verdict["met"] and verdict["missing"] == ["d"]
    # unequal round counts (a failed round) are not paired up
    assert cell_ratios({"chp": good["chp"], "node": bad["node"]}) == {}


def test_lookup_verdict() -> None:
    flat = lookup_verdict({"ns_per_lookup": {"100": 1000.0, "1000": 1010.0, "10000": 1100.0}})
    assert flat["met"] and flat["growth_100_to_10000"] == 1.1
    assert not lookup_verdict({"ns_per_lookup": {"100": 1000.0, "10000": 2000.0}})["met"]
    assert not lookup_verdict({"ns_per_lookup": {"100": 1000.0}})["met"]


def test_plan_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="unknown target kinds"):
        Plan(kinds=("chp", "nginx-proxy"))
    with pytest.raises(ValueError, match=">= 1"):
        Plan(rounds=0)
    assert Plan.quick().rounds == 1 and Plan.full().routes == 1000


# -- the matrix: real processes ---------------------------------------------------------------
def require_nginx() -> str:
    return str(require_binary("nginx", NGINX_HINT, path=nginx_binary()))


@pytest.mark.services
def test_nginx_backend_answers_100_bytes_kept_alive(tmp_path: Path) -> None:
    binary = require_nginx()
    with ExitStack() as stack:
        server = Nginx(stack, tmp_path / "nginx", binary)
        answers = get(server.port, "/user/user0001/api/status", times=3)  # one connection
        assert answers == [(200, NGINX_BODY)] * 3
        child = server.child
    assert child.proc.poll() is not None  # stopped by PID when the stack closed


@pytest.mark.services
def test_inprocess_hub_runs_on_stock_asyncio(backend: Target, tmp_path: Path) -> None:
    routes = user_routespecs(10)
    with ExitStack() as stack:
        hub = start_inprocess(stack, tmp_path, routes, backend.base_url)
        assert hub.status == OK, hub.reason
        assert hub.info["loop"] == "asyncio.unix_events._UnixSelectorEventLoop"
        assert hub.info["routes"] == 10
        assert get(hub.port, "/user/user0009/lab")[0] == (200, b"hello from the bench backend\n")
        assert get(hub.port, "/user/nobody/")[0][0] in (404, 503)  # no route (hub's error page)
        assert measure_round_trips(hub.port, "/user/user0003/ws", count=5, warmup=1).count == 5


@pytest.mark.services
@pytest.mark.timeout(240)
def test_matrix_end_to_end_small(tmp_path: Path) -> None:
    """Every cell of the matrix gets a number for CHP, the node and the in-process plane."""
    require_binary("wrk", INSTALL_HINTS["wrk"])
    require_nginx()
    require_chp()
    plan = Plan(
        routes=100,
        rounds=1,
        duration=1,
        warmup=0,
        kinds=("chp", "node", "inprocess"),
        parsers=("h11",),  # always there (the others have their own tests): 24 cells, not 40
        ws_round_trips=40,
        profile_duration=0,
        lookup="",
        plot=False,
    )
    result = run_plan(plan, tmp_path)
    assert result["targets"]["nginx"]["direct"]["body_bytes"] == 100
    started = result["targets"]["bench"]
    nodes = [n for n in started if n.startswith("node-")]
    hubs = [n for n in started if n.startswith("inprocess")]
    assert nodes and hubs, started
    for name in hubs:  # EventProxy's plane on a stock asyncio loop, never uvloop
        assert started[name]["loop"] == "asyncio.unix_events._UnixSelectorEventLoop"
    subjects = [*nodes, *hubs]
    assert list(result["matrix"]) == [c.key for c in shapes()]
    for key, cell in result["matrix"].items():
        assert cell["errors"] == {}, (key, cell["errors"])
        assert set(cell["http"]) == {"chp", *subjects}, key
        for name, h in cell["http"].items():
            (only,) = h["rounds"]
            assert only["errors"] == 0 and only["requests"] > 50, (key, name, only)
            assert only["proxy_cpu_s"] > 0 and h["req_per_cpu_s"] > 0, (key, name, only)
        for name in subjects:
            r = cell["ratios"][f"{name}/chp"]
            assert r["rps"] == round(cell["http"][name]["rps"] / cell["http"]["chp"]["rps"], 3)
            assert len(r["rps_per_round"]) == 1
    for name in ["chp", *subjects]:
        assert result["websocket"][name].get("count") == 40, result["websocket"]
    verdicts = result["verdicts"]
    for name in nodes:
        assert set(verdicts[f"{name} >= 2x chp"]["cells"]) == set(result["matrix"])
    for name in hubs:
        assert set(verdicts[f"{name} >= 1.5x chp"]["cells"]) == set(result["matrix"])
        assert f"{name} websocket p50 <= chp" in verdicts
    text = markdown_summary(result)
    assert "nginx/t1/one" in text and "bench/t2/all" in text and "inprocess" in text
