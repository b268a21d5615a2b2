"""``eventproxy demo --ha``: 3 etcd members, 2 traefik replicas, 1 data-plane node and a real
JupyterHub, all on 127.0.0.1, started through the CLI.

The user's route, added by the hub when alice's server starts, is confirmed on every replica
(both traefik replicas and the node) before ``add_route`` returns: once the hub says her server
is ready, each serves it at the first request, and no warning says one was left out. Then one
traefik replica and one etcd member are killed by the PIDs the demo printed, and headless
Chromium still logs in through the surviving replica and reaches JupyterLab. SIGTERM stops
everything: no process the demo started is left. A screenshot goes to
``test-artifacts/demo-ha.png`` (``demo-ha-failure.png`` when a browser step fails).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import ssl
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventproxy.demo import is_running, process_tree
from eventproxy.supervise import TraefikLayout
from integration.browser import (
    ARTIFACTS,
    CHROMIUM_FLAGS,
    cmdline,
    kill_leftovers,
    login,
    require_chromium,
    spawn_and_wait,
)
from support import ChildProcess, free_port, missing_service, wait_until
from support.etcd import require_etcd
from support.traefik import require_traefik

pytestmark = [pytest.mark.services, pytest.mark.timeout(420)]

STEP = 30_000  # ms: one page step
SPAWN = 90_000  # ms: log in -> JupyterLab


def _ready(child: ChildProcess) -> dict[str, Any] | None:
    for line in child.output().splitlines():
        if line.startswith('{"event": "ready"'):
            event: dict[str, Any] = json.loads(line)
            return event
    return None


@contextlib.contextmanager
def running_ha_demo(
    tmp_path: Path,
) -> Iterator[tuple[ChildProcess, dict[str, Any], dict[int, int]]]:
    password = secrets.token_urlsafe(12)
    argv = [
        sys.executable,
        "-m",
        "eventproxy.cli",
        "demo",
        "--ha",
        "--json",
        "--port",
        str(free_port()),
        "--workdir",
        str(tmp_path / "demo"),
        "--users",
        "alice",
        f"--password={password}",
    ]
    child = ChildProcess(argv, log_path=tmp_path / "demo-ha.log", cwd=tmp_path)
    seen: dict[int, int] = {}
    try:
        wait_until(
            lambda: _ready(child) is not None,
            timeout=180,
            what="eventproxy demo --ha to print its ready line",
            alive=child.check_alive,
            poll=0.2,
        )
        event = _ready(child)
        assert event is not None and event["password"] == password
        seen.update(process_tree(child.pid))
        yield child, event, seen
    finally:
        seen.update(process_tree(child.pid))
        child.stop(timeout=60)
        kill_leftovers(seen)


def _server_ready(client: httpx.Client, user: str) -> bool:
    """The hub's REST API (cookie auth, with the XSRF token JupyterHub asks of it)."""
    xsrf = [c.value for c in client.cookies.jar if c.name == "_xsrf"]
    r = client.get(f"/hub/api/users/{user}", headers={"X-XSRFToken": xsrf[-1]} if xsrf else {})
    assert r.status_code == 200, (r.status_code, r.text[:500])
    return bool(r.json()["servers"].get("", {}).get("ready"))


def _killed(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_running(pid), timeout=10, what=f"PID {pid} gone")


def test_demo_ha_survives_a_replica_and_an_etcd_member(tmp_path: Path) -> None:
    require_etcd()
    require_traefik()
    chromium = require_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("Playwright for Python is not installed: pip install playwright")
        raise

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "demo-ha.png"
    failure_shot = ARTIFACTS / "demo-ha-failure.png"
    for old in (screenshot, failure_shot):
        old.unlink(missing_ok=True)

    with running_ha_demo(tmp_path) as (child, event, seen):
        urls: list[str] = event["urls"]
        pids: dict[str, int] = event["pids"]
        assert len(urls) == 3 and len(set(urls)) == 3
        assert {"etcd-0", "etcd-1", "etcd-2", "traefik-0", "traefik-1", "node", "hub"} == set(pids)
        assert event["log_url"].startswith("etcd://127.0.0.1:")
        # each traefik replica has a default certificate (else it makes an RSA key per reload)
        for name in ("traefik-0", "traefik-1"):
            layout = TraefikLayout(tmp_path / "demo" / name)
            api = tomllib.loads(layout.api_path.read_text())
            default = api["tls"]["stores"]["default"]["defaultCertificate"]
            assert default == {
                "certFile": str(layout.default_cert_path),
                "keyFile": str(layout.default_key_path),
            }
            assert stat.S_IMODE(layout.default_key_path.stat().st_mode) == 0o600
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                layout.default_cert_path, layout.default_key_path
            )

        # alice's route, added through the hub, is confirmed on all three replicas: once the
        # hub's API says her server is ready (it is, only after add_route returned), each
        # replica serves it at the first request (no wait, no retry)
        with httpx.Client(base_url=urls[0], trust_env=False, timeout=10.0) as client:
            login(client, "alice", event["password"])
            spawn_and_wait(client, "alice")
            wait_until(
                lambda: _server_ready(client, "alice"),
                timeout=60,
                what="the hub's API to say alice's server is ready",
            )
            cookies = client.cookies
        for i, url in enumerate(urls):
            with httpx.Client(base_url=url, cookies=cookies, trust_env=False, timeout=10.0) as c:
                r = c.get("/user/alice/api")
                assert r.status_code == 200 and "version" in r.json(), (i, url, r.status_code)
        # ... and the hub confirmed every change everywhere: nothing was left out
        for left_out in ("not everywhere", "traefik replicas; not by", "data-plane nodes; not on"):
            assert left_out not in child.output(), child.output()[-5000:]

        # one traefik replica and one etcd member go
        seen.update(process_tree(child.pid))
        _killed(pids["traefik-0"])
        _killed(pids["etcd-0"])

        def reported() -> set[str]:
            return {
                json.loads(line)["name"]
                for line in child.output().splitlines()
                if line.startswith('{"event": "exited"')
            }

        wait_until(
            lambda: reported() == {"traefik-0", "etcd-0"},
            timeout=30,
            what="the demo reporting the two it lost",
        )
        child.check_alive()

        # a new browser logs in through the surviving replica and reaches JupyterLab
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=str(chromium),
                headless=True,
                args=CHROMIUM_FLAGS,
                viewport={"width": 1280, "height": 800},
            )
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(STEP)
            try:
                page.goto(urls[1], timeout=STEP)
                page.wait_for_url(re.compile(r"/hub/login"), timeout=STEP)
                page.fill("#username_input", "alice")
                page.fill("#password_input", event["password"])
                page.click("#login_submit")
                page.wait_for_url(re.compile(r"/user/alice/lab"), timeout=SPAWN)
                assert page.url.startswith(urls[1]), page.url
                page.locator(".jp-LauncherCard").first.wait_for(timeout=SPAWN)
                page.screenshot(path=str(screenshot))
            except Exception:
                page.screenshot(path=str(failure_shot))
                raise
            finally:
                context.close()

        # Ctrl-C (SIGTERM here) stops everything by PID
        seen.update(process_tree(child.pid))
        os.kill(child.pid, signal.SIGTERM)
        try:
            code = child.proc.wait(90)
        except subprocess.TimeoutExpired:
            raise AssertionError("demo --ha did not stop: " + child.output()[-3000:]) from None
        assert code == 0, child.output()[-5000:]
        alive = {pid: cmdline(pid) for pid, st in seen.items() if is_running(pid, st)}
        alive |= {pid: name for name, pid in pids.items() if is_running(pid)}
        assert not alive, f"still running after the demo stopped: {alive}"
        lines = [line for line in child.output().splitlines() if line.startswith('{"event"')]
        assert json.loads(lines[-1])["event"] == "stopped", lines
    assert screenshot.stat().st_size > 10_000


# -- quick checks ------------------------------------------------------------------------------


def test_demo_ha_refuses_a_non_loopback_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    from eventproxy import cli

    code = cli.main(
        ["demo", "--ha", "--ip", "192.0.2.1", "--workdir", str(tmp_path)], out=io.StringIO()
    )
    assert code == 1
    assert "listens on 127.0.0.1 only" in capsys.readouterr().err
    assert not (tmp_path / "jupyterhub_config.py").exists()


def test_demo_ha_hub_config_selects_etcd_and_both_replicas(tmp_path: Path) -> None:
    from eventproxy.demo import DemoSettings
    from eventproxy.demo_ha import HASettings, Member, Replica, hub_config_ha

    members = tuple(Member(f"etcd-{i}", 2000 + i, 3000 + i) for i in range(3))
    replicas = tuple(Replica(f"traefik-{i}", 4000 + i, 5000 + i, tmp_path) for i in range(2))
    hub = DemoSettings(
        ip="127.0.0.1",
        port=4000,
        hub_port=6000,
        workdir=tmp_path,
        users=("alice",),
        password="pa'ss word",
        log_url="etcd://127.0.0.1:2000,127.0.0.1:2001,127.0.0.1:2002/demo",
        allow_root=False,
    )
    settings = HASettings(hub, members, replicas, 7000, 7001, "tok'en", "etcd", "traefik")
    from traitlets.config import Config

    c = Config()
    exec(
        compile(hub_config_ha(settings), "jupyterhub_config.py", "exec"), {"get_config": lambda: c}
    )
    assert c.JupyterHub.proxy_class == "eventproxy"
    assert c.EventProxy.log_url == hub.log_url
    assert c.EventProxy.data_plane == "traefik" and c.EventProxy.should_start is False
    assert c.EventProxy.traefik_api_urls == ["http://127.0.0.1:5000", "http://127.0.0.1:5001"]
    assert c.EventProxy.traefik_api_password == "tok'en"
    assert c.EventProxy.require_all_endpoints is False
    assert c.EventProxy.data_plane_endpoints == ["http://127.0.0.1:7001"]  # the node's admin
    assert settings.urls == [
        "http://127.0.0.1:4000/",
        "http://127.0.0.1:4001/",
        "http://127.0.0.1:7000/",
    ]
