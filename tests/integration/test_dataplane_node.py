"""``eventproxy dataplane --log-url``: a standalone node (child process) serving the routes of a
file log that another process writes, following appends, removals and compactions."""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path

import anyio
import httpx
import pytest
from hub_support import shared_backend

from eventproxy import RouteAdded, RouteRemoved
from eventproxy.log import FileRouteLog
from support import ChildProcess, free_port, wait_until

pytestmark = pytest.mark.services


def read_ready_line(child: ChildProcess, timeout: float) -> dict[str, object]:
    def ready() -> bool:
        return any(line.startswith("{") for line in child.output().splitlines())

    wait_until(ready, timeout=timeout, what="dataplane ready line", alive=child.check_alive)
    line = next(line for line in child.output().splitlines() if line.startswith("{"))
    return dict(json.loads(line))


def status(url: str) -> tuple[int, str]:
    try:
        r = httpx.get(url, timeout=5)
    except httpx.HTTPError as exc:
        return -1, repr(exc)
    return r.status_code, r.text


def test_node_follows_a_file_log(tmp_path: Path) -> None:
    path = tmp_path / "routes.log"
    port, admin = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"

    async def write(*events: object) -> None:
        async with await FileRouteLog.open(path) as log:
            await log.append(list(events))  # type: ignore[arg-type]

    async def compact() -> None:
        async with await FileRouteLog.open(path) as log:
            await log.compact(retention=timedelta(0))

    with shared_backend() as backend:
        target = f"http://127.0.0.1:{backend}"
        anyio.run(write, RouteAdded("/user/alice/", target))
        child = ChildProcess(
            [
                sys.executable,
                "-m",
                "eventproxy.cli",
                "dataplane",
                "--json",
                "--log-url",
                f"file://{path}",
                "--listen",
                f"127.0.0.1:{port}",
                "--admin",
                f"127.0.0.1:{admin}",
            ],
            log_path=tmp_path / "node.log",
        )
        try:
            ready = read_ready_line(child, 30)
            assert ready["listening"] == [f"127.0.0.1:{port}"]
            assert status(f"{base}/user/alice/lab") == (200, "backend /user/alice/lab")
            assert status(f"{base}/user/bob/lab")[0] == 404

            anyio.run(write, RouteAdded("/user/bob/", target))
            wait_until(
                lambda: status(f"{base}/user/bob/x")[0] == 200,
                timeout=10,
                what="bob's route on the node",
                alive=child.check_alive,
            )
            anyio.run(write, RouteRemoved("/user/alice/"))
            wait_until(
                lambda: status(f"{base}/user/alice/x")[0] == 404,
                timeout=10,
                what="alice's route gone from the node",
                alive=child.check_alive,
            )
            anyio.run(compact)
            anyio.run(write, RouteAdded("/user/carol/", target))
            wait_until(
                lambda: status(f"{base}/user/carol/x")[0] == 200,
                timeout=10,
                what="a route added after compaction",
                alive=child.check_alive,
            )
            assert status(f"{base}/user/bob/x")[0] == 200
            assert status(f"http://127.0.0.1:{admin}/health")[0] == 200
        finally:
            child.stop()


def test_node_refuses_a_missing_log(tmp_path: Path) -> None:
    child = ChildProcess(
        [
            sys.executable,
            "-m",
            "eventproxy.cli",
            "dataplane",
            "--log-url",
            f"file://{tmp_path}/missing.log",
            "--listen",
            f"127.0.0.1:{free_port()}",
        ],
        log_path=tmp_path / "node.log",
    )
    code = child.proc.wait(30)
    child.stop()
    assert code == 1
    assert "does not exist" in child.output()
    assert "Traceback" not in child.output()
