"""``eventproxy demo``: a real JupyterHub behind the in-process data plane, stopped cleanly.

The service test starts the demo through the CLI on a free port, checks the hub through the
proxy, starts a single-user server, then sends SIGTERM and checks that every process of the
demo's tree (hub, server, kernels) is gone and the port is closed. The quick tests check the
refusals that happen before anything starts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from eventproxy import cli, demo
from integration.browser import (
    cmdline,
    http_client,
    login,
    running_demo,
    spawn_and_wait,
    stop_demo,
)
from support import LOOPBACK, port_accepts


@pytest.mark.services
def test_demo_serves_the_hub_and_stops_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_demo(tmp_path, users=("alice",)) as d:
        port = int(d.url.rstrip("/").rsplit(":", 1)[1])
        assert d.url == f"http://{LOOPBACK}:{port}/"
        with http_client(d) as client:
            health = client.get("/hub/health")
            assert health.status_code == 200, health.text
            root = client.get("/")
            assert root.status_code == 302 and root.headers["location"].startswith("/hub/")
            page = client.get("/hub/login")
            assert page.status_code == 200
            assert "Sign in" in page.text and 'name="password"' in page.text

            login(client, "alice", d.password)
            spawn_and_wait(client, "alice")

        tree = d.tree()
        assert d.hub_pid in tree, (d.hub_pid, tree)
        servers = [pid for pid in tree if "jupyterhub.singleuser" in cmdline(pid)]
        assert servers, {pid: cmdline(pid) for pid in tree}

        # The route log holds the user's route (read while the hub runs: read-only).
        out = io.StringIO()
        code = cli.main(["log", "--json", "--log-url", d.log_url], out=out)
        assert code == 0, (code, out.getvalue(), capsys.readouterr().err)
        added = [e["routespec"] for e in json.loads(out.getvalue())["events"]]
        assert "/user/alice/" in added, added

        assert stop_demo(d) == 0, d.output()[-5000:]
        alive = {pid: cmdline(pid) for pid, st in d.seen.items() if demo.is_running(pid, st)}
        assert not alive, f"still running after the demo stopped: {alive}"
        assert not port_accepts(port), f"port {port} still accepts connections"
        lines = [line for line in d.output().splitlines() if line.startswith('{"event"')]
        assert json.loads(lines[-1])["event"] == "stopped", lines


@pytest.mark.services
def test_demo_stops_the_servers_of_a_hub_that_died(tmp_path: Path) -> None:
    """A hub killed outright leaves its server behind; the demo stops it by PID and fails."""
    with running_demo(tmp_path, users=("alice",)) as d:
        with http_client(d) as client:
            login(client, "alice", d.password)
            spawn_and_wait(client, "alice")
        servers = {
            pid: st for pid, st in d.tree().items() if "jupyterhub.singleuser" in cmdline(pid)
        }
        assert servers
        # The demo records the hub's tree once a second; the server took seconds to answer, so
        # the demo has seen it.
        os.kill(d.hub_pid, signal.SIGKILL)
        try:
            code = d.child.proc.wait(60)
        except subprocess.TimeoutExpired:
            raise AssertionError("the demo did not exit after its hub died") from None
        assert code == 1, d.output()[-3000:]
        assert "JupyterHub exited with code -9" in d.output()
        alive = [pid for pid, st in servers.items() if demo.is_running(pid, st)]
        assert not alive, {pid: cmdline(pid) for pid in alive}


# -- quick checks: refusals before anything starts ---------------------------------------------


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = cli.main(argv, out=io.StringIO())
    return code, capsys.readouterr().err


def test_demo_refuses_a_non_loopback_address(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["demo", "--ip", "192.0.2.1", "--workdir", str(tmp_path)], capsys)
    assert code == 1
    assert "not a loopback address" in err and "--allow-remote" in err
    assert not (tmp_path / demo.CONFIG_NAME).exists()


def test_demo_refuses_a_busy_port(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind((LOOPBACK, 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = run_cli(["demo", "--port", str(port), "--workdir", str(tmp_path)], capsys)
    assert code == 1
    assert f"port {port}" in err and "--port" in err


def test_demo_says_what_to_install_without_jupyterlab(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = demo.importlib.util.find_spec

    def without_lab(name: str, *args: object) -> object:
        return None if name == "jupyterlab" else real(name)

    monkeypatch.setattr(demo.importlib.util, "find_spec", without_lab)
    code, err = run_cli(["demo", "--workdir", str(tmp_path)], capsys)
    assert code == 1
    assert "JupyterLab" in err and "pip install 'eventproxy[demo]'" in err


@pytest.mark.parametrize("users", ["", "Alice", "a/b", "x" * 40, "../etc"])
def test_demo_rejects_bad_user_names(users: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        demo.parse_users(users)


def test_demo_config_is_valid_python_with_the_settings(tmp_path: Path) -> None:
    settings = demo.DemoSettings(
        ip="127.0.0.1",
        port=8123,
        hub_port=8124,
        workdir=tmp_path / "it's here",
        users=("alice", "bob"),
        password="pa'ss\"word",
        log_url=demo.resolve_log_url("file:routes.log", tmp_path / "it's here"),
        allow_root=True,
    )
    text = demo.hub_config(settings)
    sections: dict[str, argparse.Namespace] = {}

    def section(name: str) -> argparse.Namespace:
        return sections.setdefault(name, argparse.Namespace())

    class Config:
        def __getattr__(self, name: str) -> argparse.Namespace:
            return section(name)

    exec(compile(text, "jupyterhub_config.py", "exec"), {"get_config": Config})
    assert sections["JupyterHub"].proxy_class == "eventproxy"
    assert sections["JupyterHub"].bind_url == "http://127.0.0.1:8123/"
    assert sections["JupyterHub"].hub_bind_url == "http://127.0.0.1:8124"
    assert sections["SharedPasswordAuthenticator"].user_password == "pa'ss\"word"
    assert sections["Authenticator"].allowed_users == {"alice", "bob"}
    assert sections["Spawner"].args == ["--allow-root"]
    assert sections["Spawner"].default_url == "/lab"
    assert sections["Spawner"].cmd[0] == sys.executable
    log_url = sections["EventProxy"].log_url
    assert log_url.startswith("file:///") and log_url.endswith("/it%27s%20here/routes.log")


def test_demo_help_lists_its_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventproxy.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    for option in ("--port", "--workdir", "--users", "--log-url", "--ip", "--json"):
        assert option in result.stdout
