"""Shared helpers for eventproxy's tests: free ports, child processes stopped by PID, readiness.

Every server a test needs is started on 127.0.0.1 with a free port, waited on through a real
readiness signal (a TCP connect that succeeds, an HTTP answer, a line printed by the server) and
stopped by the PID we started. Nothing here ever targets an address other than loopback.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


def in_ci() -> bool:
    """True when running in CI (``CI`` set to anything but empty, ``0`` or ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_service(message: str) -> None:
    """A test cannot run because something it needs is not installed.

    In CI (``CI=true``) that fails the test, so a missing service can never turn the run green;
    on a developer's machine the test is skipped with ``message`` (``pytest -rs`` shows it).
    """
    if in_ci():
        pytest.fail(f"{message} (CI must install it: see .ci/run)", pytrace=False)
    pytest.skip(message)


def require_binary(name: str, how_to_install: str, *, path: Path | str | None = None) -> Path:
    """The executable a test needs: ``path`` if given, else ``name`` looked up on PATH.

    When it is missing the test fails under ``CI=true`` and skips elsewhere; either way the
    message names the binary and how to install it. Every test needing an external program
    (etcd, traefik, wrk, configurable-http-proxy, Chromium...) goes through here.
    """
    if path is not None:
        candidate = Path(path)
        found = candidate if candidate.is_file() and os.access(candidate, os.X_OK) else None
        where = f" at {candidate}"
    else:
        on_path = shutil.which(name)
        found = Path(on_path) if on_path else None
        where = " on PATH"
    if found is None:
        missing_service(f"{name} not found{where}; to install: {how_to_install}")
        raise AssertionError("unreachable: missing_service fails or skips")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class ChildProcess:
    """A child process we started; stopped by its PID (process group), never by name."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.argv[0]} exited with {code} before it was ready; output:\n{self.output()}"
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL the process (and its group) right now, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], None] | None = None,
    poll: float = 0.02,
) -> None:
    """Poll a real readiness check until it holds; fail with ``what`` after ``timeout``.

    ``alive`` is called on each round so that a server that died is reported at once, with its
    output, instead of after the timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        if ready():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def port_accepts(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect((host, port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def child_process(
    argv: Sequence[str],
    *,
    log_path: Path,
    ready: Callable[[], bool],
    what: str,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[ChildProcess]:
    """Start ``argv``, wait for ``ready``, yield it, and stop it by PID afterwards."""
    child = ChildProcess(argv, log_path=log_path, env=env, cwd=cwd)
    try:
        wait_until(ready, timeout=timeout, what=what, alive=child.check_alive)
        yield child
    finally:
        child.stop()
