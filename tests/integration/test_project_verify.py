"""``eventproxy project`` and ``eventproxy verify [--repair]`` against a real etcd and files.

Drift cases (one test each): a key deleted by hand, a key edited by hand, the whole KV prefix
lost while the log survives, the file edited. And: SIGKILL the projector in the middle of a
1,000-route burst, restart it: no key missing, none stale, the applied seq equals the log head.
"""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from eventproxy import RouteAdded, RouteRemoved, open_log
from eventproxy.cli import main
from eventproxy.projectors.traefik_config import (
    kv_pairs,
    marker_key,
    our_pairs,
    seq_from_marker_rule,
)
from support import ChildProcess
from support.etcd import Etcd, require_etcd

pytestmark = [pytest.mark.services]
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        e.stop()


def _append(log_url: str, *batches: list[object]) -> None:
    async def go() -> None:
        log = await open_log(log_url)
        try:
            for batch in batches:
                await log.append(batch)  # type: ignore[arg-type]
        finally:
            await log.aclose()

    anyio.run(go)


def _table(log_url: str) -> object:
    async def go() -> object:
        log = await open_log(log_url, readonly=True)
        try:
            return await log.load_table()
        finally:
            await log.aclose()

    return anyio.run(go)


def _run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def _routes(n: int, port: int = 1) -> list[object]:
    return [RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{port}", {}) for i in range(n)]


@pytest.fixture
def kv_setup(tmp_path: Path, etcd: Etcd, request: pytest.FixtureRequest) -> tuple[str, list[str]]:
    log_url = f"file://{tmp_path}/routes.log"
    _append(log_url, _routes(20), [RouteRemoved("/user/u3/")])
    root = "v-" + request.node.name.replace("_", "-")[:40]
    target = ["--log-url", log_url, "--traefik-etcd", etcd.url, "--root-key", root]
    code, text = _run("verify", *target, "--repair")  # first projection
    assert code == 0, text
    code, text = _run("verify", *target)
    assert code == 0 and text.startswith("in sync"), text
    return root, target


def test_verify_detects_and_repairs_a_deleted_key(
    etcd: Etcd, kv_setup: tuple[str, list[str]]
) -> None:
    root, target = kv_setup
    key = f"{root}/http/services/eventproxy-_2fuser_2fu5_2f/loadBalancer/servers/0/url"
    etcd.delete(key)
    code, text = _run("verify", *target)
    assert code == 1 and "missing" in text and key in text, text
    code, text = _run("verify", *target, "--json")
    doc = json.loads(text)
    assert code == 1 and not doc["in_sync"]
    assert doc["differences"] == [
        {
            "kind": "missing",
            "where": key,
            "expected": "http://127.0.0.1:1",
            "actual": None,
            "routespec": "/user/u5/",
        }
    ]
    code, text = _run("verify", *target, "--repair")
    assert code == 0 and "repaired" in text, text
    assert etcd.get_prefix(key)[key] == "http://127.0.0.1:1"
    assert _run("verify", *target)[0] == 0


def test_verify_detects_and_repairs_an_edited_key_and_a_stale_one(
    etcd: Etcd, kv_setup: tuple[str, list[str]]
) -> None:
    root, target = kv_setup
    key = f"{root}/http/routers/eventproxy-_2fuser_2fu7_2f/rule"
    etcd.put(key, "PathPrefix(`/`)")  # would capture every request
    stale = f"{root}/http/routers/eventproxy-_2fuser_2fu3_2f/rule"  # a deleted route's key
    etcd.put(stale, "PathPrefix(`/user/u3/`)")
    foreign = f"{root}/http/routers/someone-else/rule"
    etcd.put(foreign, "Host(`x`)")
    code, text = _run("verify", *target)
    assert code == 1, text
    assert f"changed  {key}" in text and f"stale    {stale}" in text and foreign not in text
    assert _run("verify", *target, "--repair")[0] == 0
    stored = etcd.get_prefix(root + "/")
    assert stored[key] != "PathPrefix(`/`)" and stale not in stored
    assert stored[foreign] == "Host(`x`)"  # not ours: left alone


def test_verify_repairs_a_lost_prefix(etcd: Etcd, kv_setup: tuple[str, list[str]]) -> None:
    root, target = kv_setup
    etcd.delete(root + "/", prefix=True)  # jupyterhub/traefik-proxy #247: the store lost it all
    code, text = _run("verify", *target, "--json")
    assert code == 1 and len(json.loads(text)["differences"]) == 19 * 5 + 4
    assert _run("verify", *target, "--repair")[0] == 0
    log_url = target[1]
    assert our_pairs(etcd.get_prefix(root + "/"), root) == kv_pairs(_table(log_url), root)  # type: ignore[arg-type]


def test_verify_detects_and_repairs_an_edited_file(tmp_path: Path) -> None:
    log_url = f"file://{tmp_path}/routes.log"
    path = tmp_path / "routes.toml"
    _append(log_url, _routes(5))
    target = ["--log-url", log_url, "--traefik-file", str(path)]
    code, text = _run("verify", *target)
    assert code == 1 and "no file" in text
    assert _run("verify", *target, "--repair")[0] == 0
    good = path.read_text()
    path.write_text(good.replace("http://127.0.0.1:1", "http://10.1.2.3:1", 1))
    code, text = _run("verify", *target)
    assert code == 1 and "changed  eventproxy-_2fuser_2fu" in text and "10.1.2.3" in text, text
    assert _run("verify", *target, "--repair")[0] == 0
    assert path.read_text() == good
    path.write_text("this is [not toml")
    code, text = _run("verify", *target)
    assert code == 1 and "not TOML" in text
    _append(log_url, [RouteRemoved("/user/u1/")])
    assert _run("verify", *target, "--repair")[0] == 0
    assert "u1_2f" not in path.read_text()


def test_verify_repair_never_touches_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "routes.log"
    _append(f"file://{log_file}", _routes(3))
    before = log_file.read_bytes()
    _run(
        "verify",
        "--log-url",
        f"file://{log_file}",
        "--traefik-file",
        str(tmp_path / "r.toml"),
        "--repair",
    )
    assert log_file.read_bytes() == before


def test_repair_refuses_a_node() -> None:
    code = main(["verify", "--log-url", "memory://x", "--node", "http://127.0.0.1:9", "--repair"])
    assert code == 1


def _projector(log_url: str, etcd: Etcd, root: str, tmp_path: Path) -> ChildProcess:
    env = {"PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [
        sys.executable,
        "-m",
        "eventproxy.cli",
        "project",
        "--log-url",
        log_url,
        "--traefik-etcd",
        etcd.url,
        "--root-key",
        root,
    ]
    return ChildProcess(argv, log_path=tmp_path / f"project-{time.monotonic_ns()}.log", env=env)


def _marker_seq(etcd: Etcd, root: str) -> int:
    return seq_from_marker_rule(etcd.get_prefix(marker_key(root)).get(marker_key(root))) or 0


def test_sigkill_mid_burst_then_restart_converges(tmp_path: Path, etcd: Etcd) -> None:
    log_url = f"file://{tmp_path}/routes.log"
    root = "kill9"
    _append(log_url, [RouteAdded("/user/first/", "http://127.0.0.1:1", {})])
    proc = _projector(log_url, etcd, root, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while _marker_seq(etcd, root) < 1:
            assert proc.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        # the burst: 1,000 adds (and some removals), in ten appends; etcd's default
        # max-txn-ops (128) makes the projector write it in ~40 transactions. On a fast,
        # quiet machine the projector can finish a burst between two polls: then the next
        # attempt appends another burst (new routes), up to five times.
        head = 1
        for attempt in range(5):
            names = [f"/user/a{attempt}u{i}/" for i in range(1000)]
            adds = [RouteAdded(name, "http://127.0.0.1:1", {}) for name in names]
            batches: list[list[object]] = [adds[i : i + 100] for i in range(0, 1000, 100)]
            batches.append([RouteRemoved(names[i]) for i in range(0, 1000, 7)])
            start = head
            _append(log_url, *batches)
            head = start + 1000 + len(range(0, 1000, 7))
            while not start < _marker_seq(etcd, root) < head:
                assert proc.proc.poll() is None and time.monotonic() < deadline
                if _marker_seq(etcd, root) == head:
                    break  # this burst was projected before a poll saw it half done
                time.sleep(0.002)
            else:
                break  # mid-burst: kill now
        else:
            raise AssertionError("five bursts were each projected before a poll saw them half done")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        killed_at = _marker_seq(etcd, root)
        assert killed_at < head
    finally:
        proc.stop()
    proc = _projector(log_url, etcd, root, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while _marker_seq(etcd, root) != head:
            assert proc.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        table = _table(log_url)
        assert our_pairs(etcd.get_prefix(root + "/"), root) == kv_pairs(table, root)  # type: ignore[arg-type]
        code, text = _run(
            "verify", "--log-url", log_url, "--traefik-etcd", etcd.url, "--root-key", root
        )
        assert code == 0, text
    finally:
        proc.stop()


def test_project_follows_two_writers_on_an_etcd_log(tmp_path: Path, etcd: Etcd) -> None:
    """``eventproxy project`` on an etcd log that two writers append to, interleaved: every
    change of either is projected while it runs (it follows the log; nobody restarts it)."""
    log_url = f"etcd://127.0.0.1:{etcd.client_port}/two-writers-project"
    root = "traefik-two-writers"

    async def write() -> None:
        first, second = await open_log(log_url), await open_log(log_url)
        try:
            for i in range(30):
                writer = first if i % 2 else second
                await writer.append([RouteAdded(f"/user/w{i}/", f"http://127.0.0.1:{i + 1}", {})])
            await first.append([RouteRemoved("/user/w4/")])
            await second.append([RouteAdded("/user/w5/", "http://127.0.0.1:99", {})])
        finally:
            await first.aclose()
            await second.aclose()

    _append(log_url, [RouteAdded("/user/first/", "http://127.0.0.1:1", {})])
    proc = _projector(log_url, etcd, root, tmp_path)
    try:
        deadline = time.monotonic() + 30
        while _marker_seq(etcd, root) < 1:
            assert proc.proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        anyio.run(write)
        head = 1 + 30 + 2
        while _marker_seq(etcd, root) != head:
            assert proc.proc.poll() is None, proc.output()[-2000:]
            assert time.monotonic() < deadline, f"projected up to {_marker_seq(etcd, root)}"
            time.sleep(0.01)
        table = _table(log_url)
        assert our_pairs(etcd.get_prefix(root + "/"), root) == kv_pairs(table, root)  # type: ignore[arg-type]
        assert "/user/w4/" not in table and table["/user/w5/"].target == "http://127.0.0.1:99"  # type: ignore[index,operator]
    finally:
        proc.stop()
