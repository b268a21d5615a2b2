"""Run a real JupyterHub (child process) behind EventProxy, with a spawner whose "servers" are one
shared loopback HTTP backend, so that hundreds of users cost nothing to start.

The backend answers every request with ``backend <path>``; the spawner reports it running as
long as the backend accepts connections, so a restarted hub finds every server still up.
"""

from __future__ import annotations

import http.server
import json
import secrets
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from support import LOOPBACK, ChildProcess, free_port, wait_until

SPAWNER = '''
from jupyterhub.spawner import Spawner


class SharedBackendSpawner(Spawner):
    """Every user's server is the one shared test backend."""

    backend_port = {backend_port}

    async def start(self):
        return ("127.0.0.1", self.backend_port)

    async def poll(self):
        import asyncio
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.backend_port), 10
            )
        except (OSError, asyncio.TimeoutError):
            return 1
        writer.close()
        return None

    async def stop(self, now=False):
        pass
'''


class _Backend(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        # One write per response: split small writes meet Nagle + delayed ACK (40 ms stalls).
        body = f"backend {self.path}".encode()
        head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        self.wfile.write(head + body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024  # a restarted hub polls every server at once
    daemon_threads = True


@contextmanager
def shared_backend() -> Iterator[int]:
    server = _Server((LOOPBACK, 0), _Backend)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


class Hub:
    """One JupyterHub configuration in ``workdir``; ``start()`` may be called again after a kill."""

    def __init__(self, workdir: Path, backend_port: int, *, log_url: str | None = None) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.hub_port = free_port()
        self.token = secrets.token_hex(16)
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.child: ChildProcess | None = None
        self.starts = 0
        log_line = f"c.EventProxy.log_url = {log_url!r}" if log_url else ""
        (workdir / "jupyterhub_config.py").write_text(
            textwrap.dedent(SPAWNER.format(backend_port=backend_port))
            + textwrap.dedent(f"""
            c = get_config()  # noqa
            c.JupyterHub.proxy_class = "eventproxy"
            {log_line}
            c.JupyterHub.ip = "{LOOPBACK}"
            c.JupyterHub.port = {self.port}
            c.JupyterHub.hub_ip = "{LOOPBACK}"
            c.JupyterHub.hub_port = {self.hub_port}
            c.JupyterHub.authenticator_class = "dummy"
            c.Authenticator.allow_all = True
            c.JupyterHub.spawner_class = SharedBackendSpawner
            c.JupyterHub.cleanup_servers = False
            c.JupyterHub.concurrent_spawn_limit = 0
            c.JupyterHub.last_activity_interval = 3600
            c.JupyterHub.services = [{{"name": "tester", "api_token": "{self.token}"}}]
            c.JupyterHub.load_roles = [{{
                "name": "tester",
                "scopes": ["admin:users", "admin:servers", "list:users", "read:users"],
                "services": ["tester"],
            }}]
            """)
        )

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def start(self, timeout: float = 60) -> None:
        self.starts += 1
        log = self.workdir / f"hub-{self.starts}.log"
        self.child = ChildProcess(
            [sys.executable, "-m", "jupyterhub", "-f", "jupyterhub_config.py"],
            log_path=log,
            cwd=self.workdir,
        )
        wait_until(
            self.health_ok,
            timeout=timeout,
            what="JupyterHub /hub/health",
            alive=self.child.check_alive,
        )

    def health_ok(self) -> bool:
        try:
            return httpx.get(f"{self.url}/hub/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def is_running(self) -> bool:
        """The hub has finished starting (it logs this after check_routes)."""
        return self.child is not None and "JupyterHub is now running" in self.child.output()

    def kill(self) -> None:
        assert self.child is not None
        self.child.kill()

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()

    def users(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.api}/users", headers=self.headers(), timeout=30)
        r.raise_for_status()
        return list(r.json())

    def create_users(self, names: list[str]) -> None:
        r = httpx.post(
            f"{self.api}/users",
            headers=self.headers(),
            content=json.dumps({"usernames": names}),
            timeout=60,
        )
        assert r.status_code == 201, r.text

    def start_server(self, name: str) -> None:
        r = httpx.post(f"{self.api}/users/{name}/server", headers=self.headers(), timeout=60)
        assert r.status_code in (201, 202), r.text
