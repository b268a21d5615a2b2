"""JupyterHub's own proxy tests (``jupyterhub.tests.test_proxy``) with EventProxy as proxy_class.

They run in a child pytest process (see :mod:`jh_suite_runner`): every test must pass, except
the ones :mod:`eventproxy_jupyterhub_plugin` lists as unable to pass with any proxy other than
configurable-http-proxy (reported as not-run xfails, with the reason).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jh_suite_runner import DEFAULT_MODULES, Unavailable, run

from support import missing_service

pytestmark = pytest.mark.services


def test_jupyterhub_proxy_tests_pass_with_eventproxy(tmp_path: Path) -> None:
    """``EVENTPROXY_JH_SUITE_MODULES=jupyterhub.tests.test_proxy,jupyterhub.tests.test_named_servers``
    runs more of JupyterHub's modules (test_named_servers: 34 tests, about 2 minutes)."""
    modules = tuple(m for m in os.environ.get("EVENTPROXY_JH_SUITE_MODULES", "").split(",") if m)
    try:
        code, output, results = run(modules or DEFAULT_MODULES, workdir=tmp_path)
    except Unavailable as exc:
        missing_service(str(exc))
    assert code == 0, output[-6000:]
    outcomes = {r.outcome for r in results}
    assert outcomes <= {"passed", "skipped", "xfailed"}, output[-6000:]
    assert sum(r.outcome == "passed" for r in results) >= 25, output[-6000:]
