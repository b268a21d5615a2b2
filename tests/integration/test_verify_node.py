"""``eventproxy verify --node ADMIN_URL`` against a real data-plane node (a child process
following a file log): the node's installed routers (its read-only ``GET /routes``) are
compared with the fold of the log named by ``--log-url``, router by router.

The planted differences: the node follows log A; ``verify`` is given log B, which has the same
seq and the same number of routes as A but one target differs (a seq/count comparison would
call them in sync), and then A moves on (a route added, one re-targeted, one removed).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import anyio
import httpx
import pytest

from eventproxy import RouteAdded, RouteRemoved
from eventproxy.cli import main
from eventproxy.log import FileRouteLog
from eventproxy.traefik import name_for
from support import ChildProcess, free_port, wait_until

pytestmark = pytest.mark.services

SECRET = "s3cret-in-a-target"


def _append(path: Path, *events: object) -> int:
    async def go() -> int:
        async with await FileRouteLog.open(path) as log:
            seqs = await log.append(list(events))  # type: ignore[arg-type]
        return seqs[-1]

    return anyio.run(go)


def _verify(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["verify", *argv], out=out)
    return code, out.getvalue()


def _node(log: Path, tmp_path: Path) -> tuple[ChildProcess, str]:
    admin = f"http://127.0.0.1:{free_port()}"
    child = ChildProcess(
        [
            sys.executable,
            "-m",
            "eventproxy.cli",
            "dataplane",
            "--log-url",
            f"file://{log}",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin",
            admin.removeprefix("http://"),
        ],
        log_path=tmp_path / "node.log",
    )
    return child, admin


def _wait_seq(child: ChildProcess, admin: str, seq: int) -> None:
    def reached() -> bool:
        try:
            doc = httpx.get(admin + "/health", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return False
        return int(doc.get("applied_seq") or 0) >= seq

    wait_until(reached, timeout=30, what=f"node at seq {seq}", alive=child.check_alive)


def test_verify_node_compares_the_installed_table(tmp_path: Path) -> None:
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    common = [
        RouteAdded("/user/alice/", "http://127.0.0.1:1"),
        RouteAdded("/user/carol/", f"http://user:{SECRET}@127.0.0.1:3"),
    ]
    head = _append(a, *common, RouteAdded("/user/bob/", "http://127.0.0.1:2"))
    assert _append(b, *common, RouteAdded("/user/bob/", "http://127.0.0.1:22")) == head
    child, admin = _node(a, tmp_path)
    try:
        _wait_seq(child, admin, head)
        # the read-only table: every router, no credentials
        routes = httpx.get(admin + "/routes", timeout=5)
        assert routes.status_code == 200, routes.text
        doc = routes.json()
        assert doc["applied_seq"] == head
        assert set(doc["routers"]) == {
            name_for(s) for s in ("/user/alice/", "/user/bob/", "/user/carol/")
        }
        carol = doc["routers"][name_for("/user/carol/")]
        assert carol["servers"] == ["http://***@127.0.0.1:3"]
        assert SECRET not in routes.text

        code, text = _verify("--log-url", f"file://{a}", "--node", admin)
        assert code == 0 and "in sync" in text, text

        # same seq, same count, one target differs: found, and named
        code, text = _verify("--log-url", f"file://{b}", "--node", admin, "--json")
        assert code == 1, text
        report = json.loads(text)
        assert report["in_sync"] is False
        (diff,) = report["differences"]
        assert diff["kind"] == "changed" and diff["routespec"] == "/user/bob/"
        assert diff["expected"]["servers"] == ["http://127.0.0.1:22"]
        assert diff["actual"]["servers"] == ["http://127.0.0.1:2"]
        assert SECRET not in text

        # the node's log moves on: stale, changed and missing routers, and the seq
        later = _append(
            a,
            RouteAdded("/user/dave/", "http://127.0.0.1:4"),
            RouteAdded("/user/alice/", "http://127.0.0.1:11"),
            RouteRemoved("/user/carol/"),
        )
        _wait_seq(child, admin, later)
        code, text = _verify("--log-url", f"file://{b}", "--node", admin, "--json")
        assert code == 1
        found = {
            (d["kind"], d.get("routespec", d["where"])) for d in json.loads(text)["differences"]
        }
        assert found == {
            ("seq", "applied_seq"),
            ("stale", "/user/dave/"),
            ("changed", "/user/alice/"),
            ("changed", "/user/bob/"),
            ("missing", "/user/carol/"),
        }
        code, text = _verify("--log-url", f"file://{b}", "--node", admin)
        assert code == 1 and "stale" in text and "missing" in text, text
        code, text = _verify("--log-url", f"file://{a}", "--node", admin)
        assert code == 0, text
    finally:
        child.stop()


def test_verify_node_names_an_unreachable_node(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _append(tmp_path / "a.log", RouteAdded("/user/alice/", "http://127.0.0.1:1"))
    dead = f"http://127.0.0.1:{free_port()}"
    code, text = _verify("--log-url", f"file://{tmp_path}/a.log", "--node", dead)
    assert code == 1
    assert f"--node {dead}: cannot read /health" in text + capsys.readouterr().err
