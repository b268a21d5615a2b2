"""``eventproxy dataplane --log-url``: a standalone node (child process) serving the routes of a
file log that another process writes, following appends, removals and compactions."""

from __future__ import annotations

import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
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
    try:
        code = child.proc.wait(30)
    finally:
        child.stop()  # also when it did not exit in time: never leave a node running
    assert code == 1
    assert "does not exist" in child.output()
    assert "Traceback" not in child.output()


# -- one command, one option set, whichever source it serves ------------------------------------
NODE_OPTIONS = {
    "--listen", "--admin", "--loop", "--io-edge", "--error-target", "--connect-timeout",
    "--header-timeout", "--idle-timeout", "--backend-timeout", "--forwarded-trusted-ip",
    "--log-level", "--config", "--etcd", "--prefix",
}  # fmt: skip


def help_options(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, *argv, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", done.stdout))


def test_eventproxy_dataplane_has_one_option_set_whichever_source() -> None:
    command = ("-m", "eventproxy.cli", "dataplane")
    default = help_options(*command)
    assert default == help_options(*command, "--config", "dynamic.toml")
    assert default == help_options(*command, "--etcd", "http://127.0.0.1:2379")
    assert default == help_options(*command, "--log-url", "file:routes.log")
    assert NODE_OPTIONS | {"--log-url", "--json", "--etcd-username"} <= default
    # the data plane's own entry point is the same command without the route log
    standalone = help_options("-m", "eventproxy_dataplane")
    assert standalone >= NODE_OPTIONS
    credentials = {o for o in default if o.startswith("--etcd-")}
    assert default - standalone == {"--log-url", "--json", "--state-dir", *credentials}


class ErrorPages:
    """A loopback server answering ``GET /CODE`` with a page naming the code (--error-target)."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f"custom error page {self.path.split('?')[0].strip('/')}".encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_after_partial_headers(port: int, limit: float) -> float:
    """Seconds until the node ends a connection that never finishes its request head."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n")  # ... and nothing more
        while s.recv(4096):  # a 408 answer, then the close
            pass
    return time.monotonic() - start


@pytest.mark.parametrize("source", ["log", "config"])
def test_node_options_are_honoured_with_either_source(tmp_path: Path, source: str) -> None:
    pages = ErrorPages()
    port, admin = free_port(), free_port()
    if source == "log":
        path = tmp_path / "routes.log"
        anyio.run(_append, path, RouteAdded("/user/alice/", "http://127.0.0.1:9"))
        where = ["--log-url", f"file://{path}"]
    else:
        config = tmp_path / "dynamic.toml"
        config.write_text(
            '[http.routers.alice]\nrule = "PathPrefix(`/user/alice/`)"\nservice = "alice"\n'
            '[[http.services.alice.loadBalancer.servers]]\nurl = "http://127.0.0.1:9"\n'
        )
        where = ["--config", str(config)]
    argv = [
        sys.executable, "-m", "eventproxy.cli", "dataplane", "--json", *where,
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}",
        "--loop", "asyncio", "--io-edge", "anyio", "--header-timeout", "0.5",
        "--connect-timeout", "2.5", "--error-target", pages.url, "--parser", "h11",
    ]  # fmt: skip
    child = ChildProcess(argv, log_path=tmp_path / "node.log")
    try:
        ready = read_ready_line(child, 30)
        assert ready["listening"] == [f"127.0.0.1:{port}"]
        assert ready["admin"] == f"127.0.0.1:{admin}"
        # uvloop (installed here) runs the asyncio loop, with the I/O edge, parser, timeouts given
        assert "event loop uvloop, I/O edge anyio, parser h11, timeouts connect=2.5 header=0.5" in (
            child.output()
        )
        # --error-target: the node's own 404 is the error target's page
        assert status(f"http://127.0.0.1:{port}/nobody/") == (404, "custom error page 404")
        # the route of either source is served (its server is down: the error target's 503/502)
        code, body = status(f"http://127.0.0.1:{port}/user/alice/lab")
        assert code in (502, 503) and body == f"custom error page {code}"
        # --header-timeout 0.5 (the default is 60 s)
        assert closed_after_partial_headers(port, limit=20) < 15
        assert status(f"http://127.0.0.1:{admin}/health")[0] == 200
    finally:
        child.stop()
        pages.close()


async def _append(path: Path, *events: object) -> None:
    async with await FileRouteLog.open(path) as log:
        await log.append(list(events))  # type: ignore[arg-type]
