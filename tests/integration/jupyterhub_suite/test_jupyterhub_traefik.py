"""JupyterHub's own proxy tests with ``data_plane = "traefik"``: every MockHub's EventProxy
starts a real traefik (file provider on its file log) and confirms each change on its API.

Same rules as ``test_jupyterhub_proxy_tests.py`` (a child pytest process; only the tests that
cannot pass with any proxy but configurable-http-proxy are not run).
``EVENTPROXY_JH_SUITE_MODULES`` selects more modules (test_named_servers, test_api).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jh_suite_runner import DEFAULT_MODULES, Unavailable, run

from support import missing_service
from support.traefik import require_traefik

pytestmark = pytest.mark.services


def test_jupyterhub_proxy_tests_pass_with_traefik(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_traefik()
    monkeypatch.setenv("EVENTPROXY_JH_SUITE_DATA_PLANE", "traefik")
    modules = tuple(m for m in os.environ.get("EVENTPROXY_JH_SUITE_MODULES", "").split(",") if m)
    try:
        code, output, results = run(modules or DEFAULT_MODULES, workdir=tmp_path)
    except Unavailable as exc:
        missing_service(str(exc))
    assert code == 0, output[-6000:]
    outcomes = {r.outcome for r in results}
    assert outcomes <= {"passed", "skipped", "xfailed"}, output[-6000:]
    assert sum(r.outcome == "passed" for r in results) >= 25, output[-6000:]
