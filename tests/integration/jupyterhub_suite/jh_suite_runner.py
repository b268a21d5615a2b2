"""Run JupyterHub's own (shipped) test modules in a separate pytest process, with EventProxy.

JupyterHub's tests need pytest-asyncio; the project's suite runs on anyio's plugin and must not
get pytest-asyncio (its warnings and event-loop handling would change every other test). So
pytest-asyncio is installed with ``pip --target`` into the git-ignored
``.cache/jupyterhub-suite/site`` and put on ``PYTHONPATH`` for the child process only, together
with :mod:`eventproxy_jupyterhub_plugin`, which makes JupyterHub's ``MockHub`` use
``proxy_class = "eventproxy"``.

:func:`start` runs one in the background (its output in its workdir); the test starts the
two modes together. By hand (the default module is ``jupyterhub.tests.test_proxy``)::

    .venv/bin/python tests/integration/jupyterhub_suite/jh_suite_runner.py
    .venv/bin/python tests/integration/jupyterhub_suite/jh_suite_runner.py \\
        jupyterhub.tests.test_proxy jupyterhub.tests.test_named_servers jupyterhub.tests.test_api
    JUPYTERHUB_TEST_SUBDOMAIN_HOST=http://localhost.jovyan.org:8000 \
        .venv/bin/python tests/integration/jupyterhub_suite/jh_suite_runner.py  # host routing
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SITE = ROOT / ".cache" / "jupyterhub-suite" / "site"
PYTEST_ASYNCIO = "pytest-asyncio>=1.0,<2"
DEFAULT_MODULES = ("jupyterhub.tests.test_proxy",)
#: JupyterHub's switch for running its tests with host routing (``subdomain_host``); the plugin
#: resolves this name and its subdomains to 127.0.0.1.
SUBDOMAIN_HOST = "http://localhost.jovyan.org:8000"
TIMEOUT = 1500.0  # seconds per child run (the three modules: ~7 min at a load average of 5-6)
# JupyterHub's own pytest settings (its pyproject.toml is not shipped in the wheel).
INI = """\
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = module
asyncio_default_test_loop_scope = module
markers =
    db: JupyterHub's marker
    services: JupyterHub's marker
    slow: JupyterHub's marker
    role: JupyterHub's marker
    user: JupyterHub's marker
    group: JupyterHub's marker
"""


class Unavailable(RuntimeError):
    """pytest-asyncio could not be installed (no pip, no registry)."""


@dataclass(frozen=True, slots=True)
class Result:
    test: str
    outcome: str  # passed | failed | error | skipped | xfailed
    message: str

    @property
    def file(self) -> str:
        """The test module's file name (``test_api.py``), from the junit classname."""
        parts = self.test.split("::", 1)[0].split(".")
        return next((f"{p}.py" for p in parts if p.startswith("test_")), "")


def ensure_pytest_asyncio() -> Path:
    """``.cache/jupyterhub-suite/site`` with pytest-asyncio in it (installed on first use)."""
    if (SITE / "pytest_asyncio").is_dir():
        return SITE
    SITE.mkdir(parents=True, exist_ok=True)
    marker = ROOT / ".cache" / ".gitignore"
    if not marker.exists():
        marker.write_text("# installed tools; never committed\n*\n")
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    done = subprocess.run(
        [*argv, str(SITE), PYTEST_ASYNCIO], capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not (SITE / "pytest_asyncio").is_dir():
        raise Unavailable(f"pip install {PYTEST_ASYNCIO} failed:\n{done.stdout}{done.stderr}")
    return SITE


@dataclass
class Running:
    """One child pytest run of JupyterHub's modules (see :func:`start`)."""

    process: subprocess.Popen[bytes]
    workdir: Path
    started: float

    @property
    def output_path(self) -> Path:
        return self.workdir / "output.txt"

    def wait(self, timeout: float = TIMEOUT) -> tuple[int, str, list[Result]]:
        """(pytest's exit code, its output, results); a run past ``timeout`` (counted from
        its start) is killed and reported as such."""
        left = max(0.0, self.started + timeout - time.monotonic())
        try:
            code = self.process.wait(left)
        except subprocess.TimeoutExpired:
            self.stop()
            code = -1
        output = self.output_path.read_text(errors="replace")
        if code == -1:
            output += f"\n[jh_suite_runner: killed after {timeout:.0f}s]\n"
        return code, output, parse_junit(self.workdir / "junit.xml")

    def stop(self) -> None:
        """Kill the run (its process group: the hubs and servers it started) by its PID."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def start(
    modules: tuple[str, ...] = DEFAULT_MODULES,
    *,
    workdir: Path,
    subdomain_host: str | None = None,
    select: str = "",
) -> Running:
    """Start ``modules`` with EventProxy in a child pytest (output in ``workdir``).

    ``subdomain_host`` set: JupyterHub's tests run with host routing
    (``JUPYTERHUB_TEST_SUBDOMAIN_HOST``); unset: without it, whatever the caller's environment.
    ``select``: a pytest ``-k`` expression (only the tests it names).
    """
    site = ensure_pytest_asyncio()
    ini = workdir / "pytest.ini"
    ini.write_text(INI)
    inherited = {k: v for k, v in os.environ.items() if k != "JUPYTERHUB_TEST_SUBDOMAIN_HOST"}
    if subdomain_host:
        inherited["JUPYTERHUB_TEST_SUBDOMAIN_HOST"] = subdomain_host
    env = {
        **inherited,
        "PYTHONPATH": os.pathsep.join(
            [str(site), str(HERE), *filter(None, [os.environ.get("PYTHONPATH")])]
        ),
        "EVENTPROXY_JH_SUITE_PROXY": "eventproxy",
        "EVENTPROXY_JH_SUITE_LOG_DIR": str(workdir),
    }
    import jupyterhub

    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(ini),
        # node ids name the module (jupyterhub/tests/test_api.py::...); nothing is written there
        "--rootdir",
        str(Path(jupyterhub.__file__).resolve().parent.parent),
        "-p",
        "eventproxy_jupyterhub_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-rfEsxX",
        "--durations=10",
        f"--junitxml={workdir / 'junit.xml'}",
        *(["-k", select] if select else []),
        "--pyargs",
        *modules,
    ]
    with open(workdir / "output.txt", "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() ends all it started
        )
    return Running(process, workdir, time.monotonic())


def run(
    modules: tuple[str, ...] = DEFAULT_MODULES,
    *,
    workdir: Path,
    subdomain_host: str | None = None,
) -> tuple[int, str, list[Result]]:
    """:func:`start`, then wait: (pytest's exit code, its output, results)."""
    running = start(modules, workdir=workdir, subdomain_host=subdomain_host)
    try:
        return running.wait()
    finally:
        running.stop()


def parse_junit(path: Path) -> list[Result]:
    if not path.exists():
        return []
    results = []
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = (
                    ("failed" if child.tag == "failure" else "error"),
                    str(child.get("message", "")),
                )
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if kind == "pytest.xfail" else "skipped"
                message = str(child.get("message", ""))
        results.append(Result(name, outcome, message))
    return results


def main(argv: list[str]) -> int:
    modules = tuple(argv) or DEFAULT_MODULES
    with tempfile.TemporaryDirectory() as tmp:
        subdomain_host = os.environ.get("JUPYTERHUB_TEST_SUBDOMAIN_HOST")
        code, output, results = run(modules, workdir=Path(tmp), subdomain_host=subdomain_host)
    print(output)
    for r in results:
        if r.outcome != "passed":
            print(f"{r.outcome:8} {r.test}  {r.message}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
