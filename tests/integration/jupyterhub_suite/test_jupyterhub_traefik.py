"""JupyterHub's own proxy tests with ``data_plane = "traefik"``: every MockHub's EventProxy
starts a real traefik and confirms each change on its API -- on a file log (traefik's file
provider) and on an etcd log (traefik's etcd provider, a real etcd), each with and without host
routing (``JUPYTERHUB_TEST_SUBDOMAIN_HOST``).

Same rules as ``test_jupyterhub_proxy_tests.py`` (a child pytest process; only the tests that
cannot pass with any proxy but configurable-http-proxy are not run).
``EVENTPROXY_JH_SUITE_MODULES`` selects more modules (test_named_servers, test_api).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from jh_suite_runner import DEFAULT_MODULES, SUBDOMAIN_HOST, TIMEOUT, Unavailable, run

from support import missing_service
from support.etcd import Etcd, require_etcd
from support.traefik import require_traefik

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        e.stop()


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize(
    "subdomain_host", [None, SUBDOMAIN_HOST], ids=["path-routing", "host-routing"]
)
@pytest.mark.parametrize("log", ["file", "etcd"])
def test_jupyterhub_proxy_tests_pass_with_traefik(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    log: str,
    subdomain_host: str | None,
) -> None:
    require_traefik()
    monkeypatch.setenv("EVENTPROXY_JH_SUITE_DATA_PLANE", "traefik")
    if log == "etcd":
        etcd: Etcd = request.getfixturevalue("etcd")
        monkeypatch.setenv("EVENTPROXY_JH_SUITE_ETCD", f"127.0.0.1:{etcd.client_port}")
    else:
        monkeypatch.delenv("EVENTPROXY_JH_SUITE_ETCD", raising=False)
    modules = tuple(m for m in os.environ.get("EVENTPROXY_JH_SUITE_MODULES", "").split(",") if m)
    try:
        code, output, results = run(
            modules or DEFAULT_MODULES, workdir=tmp_path, subdomain_host=subdomain_host
        )
    except Unavailable as exc:
        missing_service(str(exc))
    assert code == 0, output[-6000:]
    outcomes = {r.outcome for r in results}
    assert outcomes <= {"passed", "skipped", "xfailed"}, output[-6000:]
    assert sum(r.outcome == "passed" for r in results) >= 25, output[-6000:]
    if subdomain_host and "jupyterhub.tests.test_proxy" in (modules or DEFAULT_MODULES):
        # JupyterHub's own extra routes under host routing (example.com//has%20space/foo/, ...)
        extra = [r for r in results if "test_extra_routes[" in r.test]
        assert extra and all(r.outcome == "passed" for r in extra), output[-6000:]
