"""The configuration the chart renders runs: its etcd arguments and traefik static configuration,
taken from the real ``helm template`` output, started as local processes on 127.0.0.1 (each
in-cluster address mapped to a free loopback port, each in-pod file to a temporary one).

Three etcd members form a cluster from the StatefulSet's arguments; the auth-setup script and
the passwords come from the rendered ConfigMap, Job and Secret; two traefik replicas start from
the rendered environment and file-provider configuration. Then: the private API refuses requests
without the rendered credentials, a replica is not ready (by the chart's own readiness probe)
until the projection is in etcd, and a route projected as the ``eventproxy`` etcd user is served
by both replicas, also after one etcd member is stopped.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

import pytest
import yaml

from eventproxy.projectors.traefik_config import kv_pairs
from eventproxy.table import RouteEntry
from support import LOOPBACK, ChildProcess, free_port, wait_until
from support.etcd import ETCD_BIN, require_etcd
from support.helm import HelmMissing, require_helm
from support.traefik import TRAEFIK_BIN, require_traefik

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eventproxy"
RELEASE = "eventproxy"

pytestmark = pytest.mark.services


def helm_or_fail() -> Path:
    try:
        return require_helm()
    except HelmMissing as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


def render() -> list[dict[str, Any]]:
    argv = [str(helm_or_fail()), "template", RELEASE, str(CHART), "--namespace", "jhub"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def named(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def secret_data(manifests: list[dict[str, Any]], name: str) -> dict[str, str]:
    data = named(manifests, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in data.items()}


@dataclass
class Member:
    name: str
    client: int = field(default_factory=free_port)
    peer: int = field(default_factory=free_port)
    health: int = field(default_factory=free_port)


class Addresses:
    """In-cluster host:port → 127.0.0.1:free port."""

    def __init__(self, members: list[Member]) -> None:
        self.members = members
        self.map: dict[str, str] = {}
        for m in members:
            self.map[f"{m.name}.{RELEASE}-etcd:2379"] = f"{LOOPBACK}:{m.client}"
            self.map[f"{m.name}.{RELEASE}-etcd:2380"] = f"{LOOPBACK}:{m.peer}"

    def __call__(self, text: str) -> str:
        for cluster, local in self.map.items():
            text = text.replace(cluster, local)
        return text


def etcd_argv(sts: dict[str, Any], member: Member, addresses: Addresses, data: Path) -> list[str]:
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    argv = [str(ETCD_BIN)]
    for arg in container["args"]:
        arg = addresses(arg.replace("$(POD_NAME)", member.name))
        arg = arg.replace("http://0.0.0.0:2379", f"http://{LOOPBACK}:{member.client}")
        arg = arg.replace("http://0.0.0.0:2380", f"http://{LOOPBACK}:{member.peer}")
        arg = arg.replace("http://0.0.0.0:2381", f"http://{LOOPBACK}:{member.health}")
        arg = arg.replace("=/var/lib/etcd/data", f"={data}")
        assert "0.0.0.0" not in arg and ".svc" not in arg, arg
        argv.append(arg)
    return argv


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    headers = {}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return int(r.status), r.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()
    except OSError:
        return 0, b""


class Backend(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"backend saw {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def backend() -> Iterator[int]:
    server = ThreadingHTTPServer((LOOPBACK, 0), Backend)
    thread = Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def etcd_call(endpoint: str, path: str, body: dict[str, Any], token: str = "") -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = token
    request = urllib.request.Request(endpoint + path, json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        out: dict[str, Any] = json.loads(reply.read())
        return out


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def test_the_rendered_etcd_and_traefik_run_and_serve_a_route(tmp_path: Path, backend: int) -> None:
    require_etcd()
    require_traefik()
    manifests = render()
    children: list[ChildProcess] = []
    try:
        # --- etcd: three members from the StatefulSet's arguments --------------------------
        sts = named(manifests, "StatefulSet", f"{RELEASE}-etcd")
        members = [Member(f"{RELEASE}-etcd-{i}") for i in range(sts["spec"]["replicas"])]
        addresses = Addresses(members)
        (etcd_container,) = sts["spec"]["template"]["spec"]["containers"]
        ready_path = etcd_container["readinessProbe"]["httpGet"]["path"]
        for m in members:
            argv = etcd_argv(sts, m, addresses, tmp_path / m.name)
            children.append(ChildProcess(argv, log_path=tmp_path / f"{m.name}.log"))
        for m, child in zip(members, children, strict=True):
            wait_until(
                lambda m=m: get(f"http://{LOOPBACK}:{m.health}{ready_path}")[0] == 200,
                timeout=60,
                what=f"{m.name} ready ({ready_path})",
                alive=child.check_alive,
            )

        # --- auth: the rendered script, Job environment and Secret --------------------------
        script = tmp_path / "etcd_auth_setup.py"
        script.write_text(
            named(manifests, "ConfigMap", f"{RELEASE}-etcd-auth-setup")["data"][
                "etcd_auth_setup.py"
            ]
        )
        passwords = secret_data(manifests, f"{RELEASE}-etcd-auth")
        auth_dir = tmp_path / "etcd-auth"
        auth_dir.mkdir()
        for key, value in passwords.items():
            (auth_dir / key).write_text(value)
        job = named(manifests, "Job", f"{RELEASE}-etcd-auth-setup")
        (job_container,) = job["spec"]["template"]["spec"]["containers"]
        job_env = {e["name"]: e["value"] for e in job_container["env"]}
        env = {
            **os.environ,
            "ETCD_ENDPOINTS": addresses(job_env["ETCD_ENDPOINTS"]),
            "ETCD_AUTH_DIR": str(auth_dir),
        }
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        endpoint = f"http://{LOOPBACK}:{members[0].client}"
        with pytest.raises(urllib.error.HTTPError):  # anonymous access is over
            etcd_call(endpoint, "/v3/kv/put", {"key": b64("x"), "value": b64("y")})

        # --- traefik: two replicas from the rendered environment ----------------------------
        static = named(manifests, "ConfigMap", f"{RELEASE}-traefik")["data"]
        dynamic = named(manifests, "ConfigMap", f"{RELEASE}-traefik-dynamic")["data"]["api.yaml"]
        api_secret = secret_data(manifests, f"{RELEASE}-traefik-api")
        deployment = named(manifests, "Deployment", f"{RELEASE}-traefik")
        (traefik_container,) = deployment["spec"]["template"]["spec"]["containers"]
        probe = traefik_container["readinessProbe"]["exec"]["command"]
        probe_url = probe[-1]
        assert probe[0] == "wget" and probe_url.startswith("http://127.0.0.1:8082/")
        users = tmp_path / "users"
        users.write_text(api_secret["users"])
        (tmp_path / "api.yaml").write_text(
            dynamic.replace("/etc/traefik/api-auth/users", str(users))
        )
        replicas = []
        for i in range(deployment["spec"]["replicas"]):
            web, api, probe_port = free_port(), free_port(), free_port()
            env = {k: addresses(v) for k, v in static.items() if k.startswith("TRAEFIK_")}
            env |= {
                "TRAEFIK_ENTRYPOINTS_WEB_ADDRESS": f"{LOOPBACK}:{web}",
                "TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS": f"{LOOPBACK}:{api}",
                "TRAEFIK_ENTRYPOINTS_PROBE_ADDRESS": f"{LOOPBACK}:{probe_port}",
                "TRAEFIK_PROVIDERS_FILE_FILENAME": str(tmp_path / "api.yaml"),
                "TRAEFIK_PROVIDERS_ETCD_PASSWORD": passwords["reader-password"],
                "HOME": str(tmp_path),
            }
            assert (
                static["TRAEFIK_PROVIDERS_ETCD_ENDPOINTS"]
                != env["TRAEFIK_PROVIDERS_ETCD_ENDPOINTS"]
            )
            workdir = tmp_path / f"traefik-{i}"
            workdir.mkdir()
            child = ChildProcess(
                [str(TRAEFIK_BIN)], log_path=workdir / "traefik.log", env=env, cwd=workdir
            )
            children.append(child)
            replicas.append((web, api, probe_port, child))
        auth = (api_secret["username"], api_secret["password"])
        for _web, api, probe_port, child in replicas:
            # started (the chart's startup/liveness probe: /ping on the API port)
            wait_until(
                lambda api=api: get(f"http://{LOOPBACK}:{api}/ping")[0] == 200,
                timeout=30,
                what="traefik /ping",
                alive=child.check_alive,
            )
            wait_until(
                lambda api=api: get(f"http://{LOOPBACK}:{api}/api/overview", auth)[0] == 200,
                timeout=30,
                what="traefik API with the rendered credentials",
                alive=child.check_alive,
            )
            assert get(f"http://{LOOPBACK}:{api}/api/overview")[0] == 401
            assert get(f"http://{LOOPBACK}:{api}/api/overview", (auth[0], "wrong"))[0] == 401
            assert get(f"http://{LOOPBACK}:{api}/metrics")[0] == 401
            assert get(f"http://{LOOPBACK}:{api}/metrics", auth)[0] == 200
            # not ready: nothing projected yet (the readiness probe's URL, on this replica)
            ready_url = probe_url.replace("127.0.0.1:8082", f"{LOOPBACK}:{probe_port}")
            assert get(ready_url)[0] == 404

        # --- a route, projected as the eventproxy etcd user ---------------------------------
        token = etcd_call(
            endpoint,
            "/v3/auth/authenticate",
            {"name": "eventproxy", "password": passwords["eventproxy-password"]},
        )["token"]
        route = RouteEntry.create("/user/alice/", f"http://{LOOPBACK}:{backend}", {}, 1)
        root = static["TRAEFIK_PROVIDERS_ETCD_ROOTKEY"]
        puts = [
            {"request_put": {"key": b64(k), "value": b64(v)}}
            for k, v in kv_pairs([route], root, seq=1).items()
        ]
        etcd_call(endpoint, "/v3/kv/txn", {"success": puts}, token)
        for web, _api, probe_port, child in replicas:
            ready_url = probe_url.replace("127.0.0.1:8082", f"{LOOPBACK}:{probe_port}")
            wait_until(
                lambda url=ready_url: get(url)[0] == 200,
                timeout=30,
                what="traefik ready by the chart's probe",
                alive=child.check_alive,
            )
            status, body = get(f"http://{LOOPBACK}:{web}/user/alice/lab")
            assert (status, body) == (200, b"backend saw /user/alice/lab")
            assert get(f"http://{LOOPBACK}:{web}/user/alicex/")[0] == 404

        # --- one etcd member goes: still served, and a change still arrives -----------------
        children[0].stop()
        route2 = RouteEntry.create("/user/bob/", f"http://{LOOPBACK}:{backend}", {}, 2)
        puts = [
            {"request_put": {"key": b64(k), "value": b64(v)}}
            for k, v in kv_pairs([route, route2], root, seq=2).items()
        ]
        second = f"http://{LOOPBACK}:{members[1].client}"
        token = etcd_call(
            second,
            "/v3/auth/authenticate",
            {"name": "eventproxy", "password": passwords["eventproxy-password"]},
        )["token"]
        etcd_call(second, "/v3/kv/txn", {"success": puts}, token)
        for web, _api, _probe, child in replicas:
            wait_until(
                lambda web=web: get(f"http://{LOOPBACK}:{web}/user/bob/")[0] == 200,
                timeout=30,
                what="traefik serving a route added with one etcd member down",
                alive=child.check_alive,
            )
            assert get(f"http://{LOOPBACK}:{web}/user/alice/")[0] == 200
    finally:
        for child in reversed(children):
            child.stop()


def test_traefik_refuses_an_unknown_setting(tmp_path: Path) -> None:
    """traefik's environment loader is strict, so the replicas above starting from the rendered
    environment shows that every TRAEFIK_* key of the chart names a real option."""
    require_traefik()
    static = named(render(), "ConfigMap", f"{RELEASE}-traefik")["data"]
    env = {k: v for k, v in static.items() if not k.startswith("TRAEFIK_PROVIDERS_ETCD")}
    env |= {
        "TRAEFIK_ENTRYPOINTS_WEB_ADDRESS": f"{LOOPBACK}:{free_port()}",
        "TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS": f"{LOOPBACK}:{free_port()}",
        "TRAEFIK_ENTRYPOINTS_PROBE_ADDRESS": f"{LOOPBACK}:{free_port()}",
        "TRAEFIK_PROVIDERS_FILE_FILENAME": str(tmp_path / "none.yaml"),
        "TRAEFIK_ENTRYPOINTS_WEB_HTTP_ENCODEDCHARACTERS_ALLOWENCODEDSLASHES": "true",
        "HOME": str(tmp_path),
    }
    done = subprocess.run(
        [str(TRAEFIK_BIN)],
        env={**os.environ, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "field not found, node: allowencodedslashes" in done.stdout + done.stderr
