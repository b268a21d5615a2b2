"""Helpers for the demo and browser tests: run ``eventproxy demo`` as a child process, log in
over HTTP, find Debian's Chromium and Playwright.

The demo is started through the CLI (``python -m eventproxy.cli demo --json``) on a free port,
waited on through the ``ready`` line it prints once ``/hub/health`` answers through the data
plane, and stopped by PID: SIGTERM to the demo (which stops the hub and its servers), then, as a
safety net, every process of the demo's tree that is still alive, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from eventproxy.demo import is_running, process_tree
from support import LOOPBACK, ChildProcess, free_port, require_binary, wait_until

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"

# Debian's chromium package; EVENTPROXY_CHROMIUM points elsewhere on other systems.
CHROMIUM = Path(os.environ.get("EVENTPROXY_CHROMIUM", "/usr/bin/chromium"))
# --headless comes from Playwright's headless=True and --user-data-dir from the persistent
# context (Playwright refuses the latter in args).
CHROMIUM_FLAGS = [
    "--no-sandbox",  # we run as root in CI; Chromium's sandbox refuses root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> Path:
    """Debian's Chromium; missing, the test fails under ``CI=true`` and skips elsewhere."""
    return require_binary(
        "chromium", "apt-get install -y chromium (or set EVENTPROXY_CHROMIUM)", path=CHROMIUM
    )


@dataclass
class Demo:
    """A running ``eventproxy demo``."""

    child: ChildProcess
    url: str
    password: str
    users: list[str]
    hub_pid: int
    workdir: Path
    log_url: str
    seen: dict[int, int] = field(default_factory=dict)  # every process of its tree we saw

    def tree(self) -> dict[int, int]:
        """The demo's live process tree (hub, servers, kernels): PID -> start time."""
        tree = process_tree(self.child.pid)
        self.seen.update(tree)
        return tree

    def output(self) -> str:
        return self.child.output()


def _ready_event(child: ChildProcess) -> dict[str, Any] | None:
    for line in child.output().splitlines():
        if line.startswith('{"event": "ready"'):
            event: dict[str, Any] = json.loads(line)
            return event
    return None


def kill_leftovers(pids: dict[int, int]) -> list[int]:
    """SIGKILL every process of ``pids`` still alive (same PID and start time); return them."""
    alive = [pid for pid, start in pids.items() if is_running(pid, start)]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return alive


@contextlib.contextmanager
def running_demo(
    tmp_path: Path, *, users: tuple[str, ...] = ("alice",), timeout: float = 90.0
) -> Iterator[Demo]:
    """Start ``eventproxy demo`` on a free port; yield once it printed its ready line."""
    password = secrets.token_urlsafe(12)
    workdir = tmp_path / "demo"
    argv = [
        sys.executable,
        "-m",
        "eventproxy.cli",
        "demo",
        "--json",
        "--port",
        str(free_port()),
        "--workdir",
        str(workdir),
        "--users",
        ",".join(users),
        f"--password={password}",  # a token may start with "-"
    ]
    child = ChildProcess(argv, log_path=tmp_path / "demo.log", cwd=tmp_path)
    demo: Demo | None = None
    try:
        wait_until(
            lambda: _ready_event(child) is not None,
            timeout=timeout,
            what="eventproxy demo to print its ready line",
            alive=child.check_alive,
            poll=0.1,
        )
        event = _ready_event(child)
        assert event is not None
        demo = Demo(
            child=child,
            url=event["url"],
            password=event["password"],
            users=event["users"],
            hub_pid=event["hub_pid"],
            workdir=Path(event["workdir"]),
            log_url=event["log_url"],
        )
        demo.tree()
        yield demo
    finally:
        seen = dict(demo.seen) if demo is not None else {}
        seen.update(process_tree(child.pid))
        child.stop(timeout=60)
        kill_leftovers(seen)


def stop_demo(demo: Demo, timeout: float = 60.0) -> int:
    """SIGTERM the demo by PID and wait for it to exit; its exit code."""
    demo.tree()
    os.kill(demo.child.pid, signal.SIGTERM)
    try:
        return demo.child.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"eventproxy demo did not exit within {timeout}s of SIGTERM; output:\n"
            + demo.output()[-5000:]
        ) from None


def login(client: httpx.Client, user: str, password: str) -> None:
    """Log in through the hub's login form (with its XSRF token)."""
    page = client.get("/hub/login")
    assert page.status_code == 200, page.text[:500]
    assert 'name="username"' in page.text and 'name="password"' in page.text
    xsrf = client.cookies.get("_xsrf")
    assert xsrf, "the login page set no _xsrf cookie"
    response = client.post(
        "/hub/login", data={"username": user, "password": password, "_xsrf": xsrf}
    )
    assert response.status_code == 302, (response.status_code, response.text[:500])


def spawn_and_wait(client: httpx.Client, user: str, timeout: float = 60.0) -> None:
    """Start ``user``'s server and wait until its API answers through the proxy."""
    response = client.get("/hub/spawn")
    assert response.status_code in (200, 302), (response.status_code, response.text[:500])
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"/user/{user}/api")
        is_json = response.headers.get("content-type", "").startswith("application/json")
        if response.status_code == 200 and is_json and "version" in response.json():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{user}'s server did not answer within {timeout}s "
                f"(last: {response.status_code} {response.text[:300]})"
            )
        time.sleep(0.2)


def http_client(demo: Demo) -> httpx.Client:
    assert demo.url.startswith(f"http://{LOOPBACK}:"), demo.url
    return httpx.Client(base_url=demo.url, trust_env=False, timeout=10.0)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
