"""A real JupyterHub behind EventProxy, killed with SIGKILL and restarted.

200 users with running servers; after the restart every route is served within 1 s of the hub
answering, and JupyterHub's check_routes changes nothing (the route log does not grow).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from hub_support import Hub, shared_backend

from eventproxy.cli import main as cli
from support import wait_until

pytestmark = pytest.mark.services

USERS = 200


def log_head(workdir: Path) -> int:
    import io

    out = io.StringIO()
    assert (
        cli(["replay", "--json", "--log-url", f"file://{workdir}/eventproxy-routes.log"], out=out)
        == 0
    )
    return int(json.loads(out.getvalue())["seq"])


def test_routes_survive_sigkill_and_check_routes_changes_nothing(tmp_path: Path) -> None:
    names = [f"user{i:03d}" for i in range(USERS)]
    with shared_backend() as backend_port:
        hub = Hub(tmp_path, backend_port)
        hub.start()
        try:
            hub.create_users(names)
            with httpx.Client(headers=hub.headers(), timeout=60) as client:
                for name in names:
                    r = client.post(f"{hub.api}/users/{name}/server")
                    assert r.status_code in (201, 202), r.text

            def all_ready() -> bool:
                return all(u["servers"].get("", {}).get("ready") for u in hub.users())

            wait_until(all_ready, timeout=120, what="200 servers ready", poll=0.5)
            wait_until(hub.is_running, timeout=30, what="hub fully started")
            with httpx.Client(timeout=10) as client:
                r = client.get(f"{hub.url}/user/user007/lab")
                assert r.status_code == 200 and r.text == "backend /user/user007/lab"
            head_before = log_head(tmp_path)
            assert head_before >= USERS + 1  # the hub route and 200 user routes

            hub.kill()
            hub.start()  # returns as soon as /hub/health answers through the proxy
            hub_up = time.monotonic()
            served = 0
            with httpx.Client(timeout=5) as client:
                for name in names:
                    r = client.get(f"{hub.url}/user/{name}/api/status")
                    assert r.status_code == 200, (name, r.status_code, r.text[:200])
                    assert r.text == f"backend /user/{name}/api/status"
                    served += 1
            elapsed = time.monotonic() - hub_up
            print(f"{USERS} routes served {elapsed:.3f}s after the restarted hub answered")
            assert served == USERS
            assert elapsed < 1.0, f"200 routes served {elapsed:.2f}s after the hub was up"

            wait_until(hub.is_running, timeout=60, what="restarted hub finished check_routes")
            assert log_head(tmp_path) == head_before, "check_routes changed routes"
            output = hub.child.output() if hub.child else ""
            for change in ("Adding missing route", "Deleting stale route", "Updating route"):
                assert change not in output
        finally:
            hub.stop()


def routes_in_log(workdir: Path) -> set[str]:
    import io

    out = io.StringIO()
    log_url = f"file://{workdir}/eventproxy-routes.log"
    assert cli(["replay", "--json", "--log-url", log_url], out=out) == 0
    return set(json.loads(out.getvalue())["routes"])


def test_a_hub_that_turns_on_host_routing_deletes_its_old_routes_and_starts(
    tmp_path: Path,
) -> None:
    """A log written without host routing holds /user/... routes; the same hub restarted with
    ``subdomain_host`` deletes them in check_routes (stale: another mode) and starts."""
    with shared_backend() as backend_port:
        hub = Hub(tmp_path, backend_port)
        hub.start()
        try:
            hub.create_users(["alice"])
            hub.start_server("alice")
            wait_until(
                lambda: bool(hub.users()[0]["servers"].get("", {}).get("ready")),
                timeout=60,
                what="alice's server ready",
            )
            wait_until(hub.is_running, timeout=30, what="hub fully started")
            assert "/user/alice/" in routes_in_log(tmp_path)
        finally:
            hub.stop()

        domain = "localhost.jovyan.org"
        with (tmp_path / "jupyterhub_config.py").open("a") as config:
            config.write(f'\nc.JupyterHub.subdomain_host = "http://{domain}:{hub.port}"\n')
        try:
            hub.start()
            wait_until(hub.is_running, timeout=60, what="hub with host routing started")
        except (TimeoutError, RuntimeError) as exc:
            output = hub.child.output() if hub.child else ""
            hub.stop()
            raise AssertionError(f"{exc}; the hub's log ends with:\n{output[-3000:]}") from None
        try:
            output = hub.child.output() if hub.child else ""
            assert "Deleting stale route /user/alice/" in output
            routes = routes_in_log(tmp_path)
            assert "/user/alice/" not in routes
            assert f"alice.{domain}/user/alice/" in routes
            with httpx.Client(timeout=10) as client:
                r = client.get(f"{hub.url}/user/alice/api", headers={"Host": f"alice.{domain}"})
                assert r.status_code == 200 and r.text == "backend /user/alice/api"
        finally:
            hub.stop()
