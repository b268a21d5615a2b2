"""JupyterHub's own tests -- ``test_proxy``, ``test_named_servers`` and ``test_api`` -- with
EventProxy as proxy_class, with and without host routing (``JUPYTERHUB_TEST_SUBDOMAIN_HOST``).

They run in child pytest processes (see :mod:`jh_suite_runner`), one per mode, both started
together by the first of the two tests and each waited on by its own test: the two modes share
the run's wall time (most of it is JupyterHub waiting on its single-user servers). Every test
must pass, except the ones :mod:`eventproxy_jupyterhub_plugin` lists as unable to pass with any
proxy other than configurable-http-proxy (reported as not-run xfails, with the reason).
``EVENTPROXY_JH_SUITE_MODULES`` (comma-separated) runs other modules instead.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest
from jh_suite_runner import SUBDOMAIN_HOST, TIMEOUT, Running, Unavailable, start

from support import missing_service

pytestmark = pytest.mark.services

MODULES = (
    "jupyterhub.tests.test_proxy",
    "jupyterhub.tests.test_named_servers",
    "jupyterhub.tests.test_api",
)
MODES = {"path-routing": None, "host-routing": SUBDOMAIN_HOST}
#: Fewer passes than this in a module means tests went missing (JupyterHub 6.1: 29 / 34 / 160
#: collected; some skip in one mode).
MIN_PASSED = {"test_proxy.py": 20, "test_named_servers.py": 25, "test_api.py": 120}


def _modules() -> tuple[str, ...]:
    chosen = tuple(m for m in os.environ.get("EVENTPROXY_JH_SUITE_MODULES", "").split(",") if m)
    return chosen or MODULES


@pytest.fixture(scope="module")
def suite_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Running]]:
    """Both modes' runs, started at once."""
    runs: dict[str, Running] = {}
    try:
        for mode, subdomain_host in MODES.items():
            workdir = tmp_path_factory.mktemp(f"jh-suite-{mode}")
            runs[mode] = start(_modules(), workdir=workdir, subdomain_host=subdomain_host)
    except Unavailable as exc:
        for running in runs.values():
            running.stop()
        missing_service(str(exc))
    yield runs
    for running in runs.values():
        running.stop()


# The child runs have their own timeout (jh_suite_runner.TIMEOUT, counted from their start).
@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("mode", list(MODES))
def test_jupyterhub_tests_pass_with_eventproxy(suite_runs: dict[str, Running], mode: str) -> None:
    code, output, results = suite_runs[mode].wait()
    tail = output[-8000:]
    assert code == 0, tail
    outcomes = Counter(r.outcome for r in results)
    assert set(outcomes) <= {"passed", "skipped", "xfailed"}, (outcomes, tail)
    if _modules() == MODULES:
        passed = Counter(r.file for r in results if r.outcome == "passed")
        for file, least in MIN_PASSED.items():
            assert passed[file] >= least, (file, passed, tail)
    if MODES[mode] and "jupyterhub.tests.test_proxy" in _modules():
        # JupyterHub's own extra routes under host routing (example.com//has%20space/foo/, ...)
        extra = [r for r in results if "test_extra_routes[" in r.test]
        assert extra and all(r.outcome == "passed" for r in extra), tail
