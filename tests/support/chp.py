"""A real configurable-http-proxy (CHP) for tests and benchmarks, on loopback ports.

CHP comes from npm, installed into ``.cache/node`` by :mod:`support.tools`. The proxy port and
the REST API port are free ports on 127.0.0.1; the API requires a random token (passed through
``CONFIGPROXY_AUTH_TOKEN``, as JupyterHub does). Readiness is the API answering
``GET /api/routes`` with that token. The process is stopped by its PID.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from support import LOOPBACK, ChildProcess, free_port, missing_service, wait_until
from support.tools import ToolMissing, chp_path, ensure_chp


class CHPError(RuntimeError):
    """The CHP REST API answered something other than success."""


def require_chp(*, install: bool = False) -> Path:
    """The configurable-http-proxy executable (installed into .cache/node first if ``install``).

    Missing, a test fails under ``CI=true`` and skips elsewhere, naming it and how to install it.
    """
    how = "python3 tests/support/tools.py install-chp (npm, into .cache/node)"
    if install:
        try:
            return ensure_chp()
        except (ToolMissing, RuntimeError) as exc:
            missing_service(f"configurable-http-proxy could not be installed: {exc}; {how}")
    found = chp_path()
    if found is None:
        missing_service(f"configurable-http-proxy not found in .cache/node; to install: {how}")
        raise AssertionError("unreachable: missing_service fails or skips")
    return found


class CHP:
    """One running configurable-http-proxy; routes are managed through its REST API."""

    def __init__(
        self,
        workdir: Path,
        *,
        extra_args: Sequence[str] = (),
        log_level: str = "warn",
        install: bool = True,
        timeout: float = 30.0,
    ) -> None:
        binary = ensure_chp() if install else chp_path()
        if binary is None:
            raise FileNotFoundError("configurable-http-proxy is not installed (.cache/node)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port()
        self.token = secrets.token_hex(16)
        argv = [
            str(binary),
            "--ip",
            LOOPBACK,
            "--port",
            str(self.port),
            "--api-ip",
            LOOPBACK,
            "--api-port",
            str(self.api_port),
            "--log-level",
            log_level,
            *extra_args,
        ]
        self.child = ChildProcess(
            argv, log_path=workdir / "chp.log", env={"CONFIGPROXY_AUTH_TOKEN": self.token}
        )
        self._conn: http.client.HTTPConnection | None = None
        try:
            wait_until(
                self._api_up,
                timeout=timeout,
                what="configurable-http-proxy API",
                alive=self.child.check_alive,
            )
        except BaseException:
            self.child.stop()
            raise

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    # -- REST API --------------------------------------------------------------------------
    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API call on a kept-alive connection; returns (status, decoded JSON or None)."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"token {self.token}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):  # one retry on a connection the server closed meanwhile
            if self._conn is None:
                self._conn = http.client.HTTPConnection(LOOPBACK, self.api_port, timeout=10)
            try:
                self._conn.request(method, f"/api/routes{path}", body=payload, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
            except (OSError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
                continue
            return resp.status, (json.loads(raw) if raw.strip() else None)
        raise AssertionError("unreachable")

    def _api_up(self) -> bool:
        try:
            status, _ = self.api("GET", "")
        except (OSError, http.client.HTTPException, ValueError):
            return False
        return status == 200

    def add_route(self, routespec: str, target: str, data: Mapping[str, Any] | None = None) -> None:
        """``POST /api/routes/<routespec>`` with ``{"target": ..., **data}``."""
        if not routespec.startswith("/"):
            raise ValueError(f"CHP routespec must start with '/': {routespec!r}")
        status, body = self.api("POST", routespec, {**(data or {}), "target": target})
        if status != 201:
            raise CHPError(f"adding route {routespec!r} -> {target!r}: HTTP {status} {body!r}")

    def add_routes(self, routes: Iterable[tuple[str, str]]) -> int:
        """Add many ``(routespec, target)`` pairs; returns how many were added."""
        count = 0
        for routespec, target in routes:
            self.add_route(routespec, target)
            count += 1
        return count

    def delete_route(self, routespec: str) -> None:
        status, body = self.api("DELETE", routespec)
        if status not in (204, 404):
            raise CHPError(f"deleting route {routespec!r}: HTTP {status} {body!r}")

    def routes(self) -> dict[str, dict[str, Any]]:
        """``GET /api/routes``: routespec -> route record (target, data, last_activity)."""
        status, body = self.api("GET", "")
        if status != 200 or not isinstance(body, dict):
            raise CHPError(f"listing routes: HTTP {status} {body!r}")
        return body

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.child.stop()


@contextlib.contextmanager
def running_chp(
    workdir: Path, *, extra_args: Sequence[str] = (), log_level: str = "warn"
) -> Iterator[CHP]:
    """Start CHP (installing it locally if needed), yield it, stop it by PID."""
    require_chp(install=True)
    proxy = CHP(workdir, extra_args=extra_args, log_level=log_level)
    try:
        yield proxy
    finally:
        proxy.stop()
