"""The configuration the chart renders runs: its etcd arguments and traefik static configuration,
taken from the real ``helm template`` output, started as local processes on 127.0.0.1 (each
in-cluster address mapped to a free loopback port, each in-pod file to a temporary one).

Three etcd members form a cluster from the StatefulSet's arguments; the auth-setup script and
the passwords come from the rendered ConfigMap, Job and Secret; two traefik replicas start from
the rendered environment and file-provider configuration. Then: the private API refuses requests
without the rendered credentials, a replica is not ready (by the chart's own readiness probe)
until the projection is in etcd, and ``EventProxy`` configured as ``charts/z2jh-overlay.yaml``
configures the hub (its ``hub.config``, ``hub.extraEnv`` from the rendered Secrets and
``hub.extraConfig``, with the in-cluster addresses mapped) adds routes that both replicas serve
when ``add_route`` returns, also after one etcd member is stopped.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.metadata import entry_points
from pathlib import Path
from threading import Thread
from typing import Any

import anyio
import httpx
import pytest
import yaml
from traitlets.config import Config

from support import LOOPBACK, ChildProcess, free_port, wait_until
from support.etcd import ETCD_BIN, require_etcd
from support.helm import HelmMissing, require_helm
from support.traefik import TRAEFIK_BIN, require_traefik

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eventproxy"
OVERLAY = ROOT / "charts" / "z2jh-overlay.yaml"
RELEASE = "eventproxy"

pytestmark = pytest.mark.services


def helm_or_fail() -> Path:
    try:
        return require_helm()
    except HelmMissing as err:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(err), pytrace=False)
        pytest.skip(str(err))


def render(*extra: str) -> list[dict[str, Any]]:
    argv = [str(helm_or_fail()), "template", RELEASE, str(CHART), "--namespace", "jhub", *extra]
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


@pytest.mark.anyio
@pytest.mark.timeout(300)
async def test_the_rendered_configuration_serves_routes_added_through_eventproxy(
    tmp_path: Path, backend: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_etcd()
    require_traefik()
    manifests = render("--set", "dataplane.enabled=true")
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
        # the init container derives traefik's users file from the API Secret
        secret_dir = tmp_path / "traefik-api"
        secret_dir.mkdir()
        for key, value in api_secret.items():
            (secret_dir / key).write_text(value)
        users = tmp_path / "users"
        (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
        command = [
            part.replace("/etc/eventproxy/traefik-api", str(secret_dir)).replace(
                "/etc/traefik/api-auth/users", str(users)
            )
            for part in init["command"]
        ]
        assert command[0] == "python3"
        subprocess.run([sys.executable, *command[1:]], check=True, timeout=30)
        assert users.read_text().startswith(api_secret["username"] + ":{SHA}")
        # the default TLS certificate (without one traefik makes an RSA key per reload), from
        # the rendered Secret, at the path the dynamic configuration names
        cert_dir = tmp_path / "default-cert"
        cert_dir.mkdir()
        for key, value in secret_data(manifests, f"{RELEASE}-traefik-default-cert").items():
            (cert_dir / key).write_text(value)
        (tmp_path / "api.yaml").write_text(
            dynamic.replace("/etc/traefik/api-auth/users", str(users)).replace(
                "/etc/traefik/default-cert", str(cert_dir)
            )
        )
        replicas = []
        for i in range(deployment["spec"]["replicas"]):
            web, api, probe_port, tls_port = free_port(), free_port(), free_port(), free_port()
            env = {k: addresses(v) for k, v in static.items() if k.startswith("TRAEFIK_")}
            env |= {
                "TRAEFIK_ENTRYPOINTS_WEB_ADDRESS": f"{LOOPBACK}:{web}",
                "TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS": f"{LOOPBACK}:{api}",
                "TRAEFIK_ENTRYPOINTS_PROBE_ADDRESS": f"{LOOPBACK}:{probe_port}",
                # a TLS entrypoint of the test's own, to see which default certificate is served
                "TRAEFIK_ENTRYPOINTS_TLSCHECK_ADDRESS": f"{LOOPBACK}:{tls_port}",
                "TRAEFIK_ENTRYPOINTS_TLSCHECK_HTTP_TLS": "true",
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
            replicas.append((web, api, probe_port, tls_port, child))
        auth = (api_secret["username"], api_secret["password"])
        for _web, api, probe_port, tls_port, child in replicas:
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
            # the rendered default certificate is the one traefik serves (not one it made)
            served = ssl.get_server_certificate((LOOPBACK, tls_port))
            assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(
                (cert_dir / "tls.crt").read_text()
            )
            # not ready: nothing projected yet (the readiness probe's URL, on this replica)
            ready_url = probe_url.replace("127.0.0.1:8082", f"{LOOPBACK}:{probe_port}")
            assert get(ready_url)[0] == 404

        # --- the hub: EventProxy configured as the z2jh overlay configures it -------------
        overlay = yaml.safe_load(OVERLAY.read_text())["hub"]
        for name, spec in overlay["extraEnv"].items():
            if isinstance(spec, str):
                monkeypatch.setenv(name, spec)
            else:
                ref = spec["valueFrom"]["secretKeyRef"]
                monkeypatch.setenv(name, secret_data(manifests, ref["name"])[ref["key"]])
        c = Config()
        for section, values in overlay["config"].items():  # as z2jh's jupyterhub_config.py
            c[section].update(values)
        for code in overlay["extraConfig"].values():
            exec(code, {"c": c})
        settings = c.EventProxy
        settings.log_url = addresses(settings.log_url)
        # the headless API Service resolves to every replica's address
        (api_service,) = settings.traefik_api_urls
        assert api_service == f"http://{RELEASE}-traefik-api:{static_port(static)}"
        settings.traefik_api_urls = [f"http://{LOOPBACK}:{api}" for _w, api, *_ in replicas]
        (entry,) = [
            e
            for e in entry_points(group="jupyterhub.proxies")
            if e.name == c.JupyterHub.proxy_class
        ]
        proxy_class = entry.load()
        proxy = proxy_class(config=c, public_url=f"http://{LOOPBACK}:{free_port()}/")
        assert proxy.data_plane == "traefik" and proxy.should_start is False
        assert proxy.traefik_api_password == api_secret["password"]
        target = f"http://{LOOPBACK}:{backend}"
        clients = [httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{w}") for w, *_ in replicas]
        try:
            await proxy.add_route("/user/alice/", target, {"user": "alice"})
            for client, (_web, _api, probe_port, *_) in zip(clients, replicas, strict=True):
                r = await client.get("/user/alice/lab")  # no wait: routed when add_route returns
                assert (r.status_code, r.text) == (200, "backend saw /user/alice/lab")
                assert (await client.get("/user/alicex/")).status_code == 404
                ready_url = probe_url.replace("127.0.0.1:8082", f"{LOOPBACK}:{probe_port}")
                assert get(ready_url)[0] == 200  # ready by the chart's probe

            # --- a data-plane node from the rendered StatefulSet follows the same log --------
            node_port = free_port()
            node_args = node_command_line(
                named(manifests, "StatefulSet", f"{RELEASE}-dataplane"),
                addresses,
                listen=node_port,
                auth_dir=auth_dir,
                state_dir=tmp_path / "node-state",
                error_target=f"http://{LOOPBACK}:{backend}/hub/error",
            )
            node = ChildProcess(
                [sys.executable, "-m", "eventproxy.cli", *node_args],
                log_path=tmp_path / "node.log",
            )
            children.append(node)
            clients.append(httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{node_port}"))
            await eventually(
                lambda: status_of(clients[-1], "/user/alice/lab", 200),
                what="the node serving alice's route",
                alive=node.check_alive,
            )

            # --- one etcd member goes: routes still served, and changes still go through ---
            children[0].stop()
            await proxy.add_route("/user/bob/", target, {})
            await proxy.delete_route("/user/alice/")
            for client in clients[:2]:  # traefik: confirmed by the hub when the calls return
                assert (await client.get("/user/bob/tree")).status_code == 200
                assert (await client.get("/user/alice/lab")).status_code == 404
            for path, status in (("/user/bob/tree", 200), ("/user/alice/lab", 404)):
                await eventually(
                    lambda path=path, status=status: status_of(clients[-1], path, status),
                    what=f"the node answering {status} for {path}",
                    alive=node.check_alive,
                )
            routes = await proxy.get_all_routes()
            assert set(routes) == {"/user/bob/"}
        finally:
            for client in clients:
                await client.aclose()
            await proxy.stop()
    finally:
        for child in reversed(children):
            child.stop()


async def status_of(client: httpx.AsyncClient, path: str, status: int) -> bool:
    try:
        return (await client.get(path)).status_code == status
    except httpx.HTTPError:
        return False


async def eventually(
    check: Callable[[], Awaitable[bool]],
    *,
    what: str,
    alive: Callable[[], None],
    within: float = 30.0,
) -> None:
    """Poll an async check (a real answer from the server) until it holds, failing after
    ``within`` seconds with ``what``; ``alive`` reports a dead process at once."""
    try:
        with anyio.fail_after(within):
            while True:
                alive()
                if await check():
                    return
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {within}s waiting for {what}") from None


def node_command_line(
    sts: dict[str, Any],
    addresses: Addresses,
    *,
    listen: int,
    auth_dir: Path,
    state_dir: Path,
    error_target: str,
) -> list[str]:
    """The node container's arguments with in-cluster addresses and files mapped; a flag this
    CLI has not got yet (PENDING_FLAGS) is dropped."""
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    args = []
    for arg in container["args"]:
        flag, _, value = arg.partition("=")
        if flag == "--listen":
            value = f"{LOOPBACK}:{listen}"
        elif flag == "--admin":
            value = f"{LOOPBACK}:{free_port()}"
        elif flag == "--state-dir":
            value = str(state_dir)
        elif flag == "--error-target":
            value = error_target
        elif flag == "--etcd-password-file":
            value = str(auth_dir / Path(value).name)
        else:
            value = addresses(value)
        args.append(f"{flag}={value}" if value else flag)
    if not _parses(args):
        args = [a for a in args if a.split("=", 1)[0] not in PENDING_FLAGS]
    assert _parses(args), args
    return args


def static_port(static: dict[str, str]) -> int:
    return int(static["TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS"].rsplit(":", 1)[1])


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


# Subcommands the chart renders that this version's CLI has not got yet (`eventproxy project`
# and `verify`, for projectors). The test below accepts them as long as they are missing, and
# checks them once they exist. (No flag is pending: PENDING_FLAGS is empty.)
PENDING_FLAGS: set[str] = set()
PENDING_COMMANDS = {"project", "verify"}


def _parses(argv: list[str]) -> bool:
    from eventproxy import cli

    try:
        cli.build_parser().parse_args(argv)
    except SystemExit:
        return False
    return True


def _subcommands() -> set[str]:
    import argparse

    from eventproxy import cli

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices)


def test_the_cli_accepts_what_the_chart_runs(helm_all_options: list[dict[str, Any]]) -> None:
    """Every eventproxy command line the chart renders (nodes, projectors and their probes,
    with every option on) is accepted by the real CLI parser."""
    commands = _subcommands()
    lines: list[list[str]] = []
    for w in helm_all_options:
        if w["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["image"].startswith("registry.example.org/eventproxy-dataplane"):
                lines.append(c["args"])
                for probe in ("readinessProbe", "livenessProbe"):
                    command = c.get(probe, {}).get("exec", {}).get("command")
                    if command and command[0] == "eventproxy":
                        lines.append(command[1:])
    assert {line[0] for line in lines} == {"dataplane", "project", "verify"}
    for line in lines:
        if line[0] not in commands:
            assert line[0] in PENDING_COMMANDS, line
            continue
        if _parses(line):
            continue
        without = [a for a in line if a.split("=", 1)[0] not in PENDING_FLAGS]
        assert _parses(without), f"the CLI refuses the chart's command line: {line}"


@pytest.fixture(scope="module")
def helm_all_options() -> list[dict[str, Any]]:
    argv = [
        str(helm_or_fail()),
        "template",
        RELEASE,
        str(CHART),
        "--values",
        str(CHART / "ci" / "all-options-values.yaml"),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
