"""JupyterHub's own tests -- ``test_proxy``, ``test_named_servers`` and ``test_api`` -- with
EventProxy as proxy_class, with and without host routing (``JUPYTERHUB_TEST_SUBDOMAIN_HOST``).

They run in child pytest processes (see :mod:`jh_suite_runner`), one per mode, both started
together by the first of the two tests and each waited on by its own test: the two modes share
the run's wall time (most of it is JupyterHub waiting on its single-user servers). Every test
must pass, except the ones :mod:`eventproxy_jupyterhub_plugin` lists as unable to pass with any
proxy other than configurable-http-proxy (reported as not-run xfails, with the reason). A
failure of one of JupyterHub's own timing races (``KNOWN_RACES`` there, each with the reason) is
re-run alone once and must then pass; the re-run is reported as a warning. Such a re-run is
allowed only when the proxy was not the slow part: every EventProxy route call the run made
(timed by the plugin) took less than ``PROXY_CALL_LIMIT``, and the note names the slowest call
of the failed tests.
``EVENTPROXY_JH_SUITE_MODULES`` (comma-separated) runs other modules instead.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from eventproxy_jupyterhub_plugin import KNOWN_RACES, PROXY_CALLS
from jh_suite_runner import SUBDOMAIN_HOST, TIMEOUT, Result, Running, Unavailable, start

from support import missing_service

pytestmark = pytest.mark.services

MODULES = (
    "jupyterhub.tests.test_proxy",
    "jupyterhub.tests.test_named_servers",
    "jupyterhub.tests.test_api",
)
MODES = {"path-routing": None, "host-routing": SUBDOMAIN_HOST}
#: Fewer passes than this in a module means tests went missing (JupyterHub 6.1.1: 34 / 34 / 160
#: collected; some skip in one mode).
MIN_PASSED = {"test_proxy.py": 20, "test_named_servers.py": 25, "test_api.py": 120}
#: No add_route / delete_route may take this long (seconds): half of JupyterHub's 10 s
#: slow_spawn_timeout / slow_stop_timeout, which the hub's own calls to the proxy count against.
PROXY_CALL_LIMIT = 5.0


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


def _tail(output: str) -> str:
    failures = output.find("= FAILURES =")
    head = output[failures : failures + 6000] + "\n...\n" if failures >= 0 else ""
    return head + output[-2500:]


def _proxy_calls(workdir: Path) -> list[dict[str, object]]:
    """The EventProxy route calls a run made, as the plugin timed them."""
    path = workdir / PROXY_CALLS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _slowest(calls: list[dict[str, object]]) -> str:
    if not calls:
        return "none"
    call = max(calls, key=lambda c: float(c["seconds"]))  # type: ignore[arg-type]
    return f"{call['call']}({call['routespec']!r}) {call['seconds']} s in {call['test']}"


def _test_name(test: str) -> str:
    """A test's function name, from a node id or a junit name (``mod::test_x[param]``)."""
    return test.rsplit("::", 1)[-1].split("[", 1)[0]


def _rerun_known_races(
    results: list[Result], mode: str, workdir: Path, calls: list[dict[str, object]]
) -> tuple[list[Result], str] | None:
    """If every failure is one of KNOWN_RACES (JupyterHub's own timing races), run those tests
    again, alone, once: (the results with the re-run's in their place, a note); else None."""
    failed = [r for r in results if r.outcome in ("failed", "error")]
    names = sorted({_test_name(r.test) for r in failed})
    if not failed or not all(name in KNOWN_RACES for name in names):
        return None
    in_failed = [c for c in calls if _test_name(str(c["test"])) in names]
    modules = tuple(sorted({r.test.split("::", 1)[0] for r in failed}))
    code, output, again = start(
        modules, workdir=workdir, subdomain_host=MODES[mode], select=" or ".join(names)
    ).wait()
    assert code == 0 and again, f"{names} failed again when re-run alone:\n{_tail(output)}"
    rerun = {r.test for r in again}
    note = (
        f"re-ran {names} alone once (known JupyterHub races): passed; the proxy's slowest "
        f"route call in the failed run of them: {_slowest(in_failed)}"
    )
    warnings.warn(note, stacklevel=1)
    return [r for r in results if r.test not in rerun] + again, note


# The child runs have their own timeout (jh_suite_runner.TIMEOUT, counted from their start).
@pytest.mark.timeout(2 * TIMEOUT + 60)
@pytest.mark.filterwarnings("default:re-ran:UserWarning")  # reported, not an error
@pytest.mark.parametrize("mode", list(MODES))
def test_jupyterhub_tests_pass_with_eventproxy(
    suite_runs: dict[str, Running], mode: str, tmp_path: Path
) -> None:
    code, output, results = suite_runs[mode].wait()
    tail = _tail(output)
    calls = _proxy_calls(suite_runs[mode].workdir)
    if any(r.outcome == "passed" for r in results):  # the runner always runs EventProxy
        assert calls, f"the plugin timed no EventProxy route call ({PROXY_CALLS} is empty)"
    slow = [c for c in calls if float(c["seconds"]) >= PROXY_CALL_LIMIT]  # type: ignore[arg-type]
    assert not slow, f"EventProxy route calls took {PROXY_CALL_LIMIT} s or more: {slow}"
    if code != 0:
        rerun = _rerun_known_races(results, mode, tmp_path, calls)
        assert rerun is not None, tail
        results, note = rerun
        tail = f"{note}\n{tail}"
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


@pytest.mark.timeout(TIMEOUT + 60)
def test_a_known_race_is_rerun_alone_once_and_reported(tmp_path: Path) -> None:
    """The re-run path itself: a failed test_spawn (a KNOWN_RACES entry) runs again alone, for
    real, and its pass replaces the failure; the note names the proxy's slowest call in it. A
    failure that is no known race is not re-run."""
    ping = Result("jupyterhub.tests.test_api::test_ping", "passed", "")
    spawn = Result("jupyterhub.tests.test_api::test_spawn", "failed", "assert 202 == 204")
    calls: list[dict[str, object]] = [
        {"test": "x.py::test_ping", "call": "add_route", "routespec": "/", "seconds": 0.5},
        {"test": "x.py::test_spawn", "call": "delete_route", "routespec": "/u/", "seconds": 0.01},
    ]
    failed_ping = Result(ping.test, "failed", "")
    assert _rerun_known_races([failed_ping, spawn], "path-routing", tmp_path, calls) is None
    try:
        with pytest.warns(UserWarning, match=r"re-ran \['test_spawn'\] alone once") as caught:
            rerun = _rerun_known_races([ping, spawn], "path-routing", tmp_path, calls)
    except Unavailable as exc:
        missing_service(str(exc))
    assert rerun is not None
    results, note = rerun
    assert ping in results and spawn not in results
    assert [r.outcome for r in results if r.test.endswith("::test_spawn")] == ["passed"]
    assert "delete_route('/u/') 0.01 s in x.py::test_spawn" in note
    assert str(caught[0].message) == note
