"""The conformance plugin's own machinery, run in a child pytest on a throwaway project.

A documented difference must be a *strict* xfail (a fixed implementation fails the run with
XPASS), must apply only to the implementation it names, can also be declared by the project
(``known_differences``), and every outcome must reach the ``--conformance-report`` JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = """
import contextlib

import pytest

from eventproxy.testing import ProxyUnderTest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def conformance_proxy_factory():
    @contextlib.asynccontextmanager
    async def factory(*, host_routing, hub_url):
        yield ProxyUnderTest(
            proxy=object(),
            public_url="http://127.0.0.1:1",
            implementation="fake",
            variant="v1",
            known_differences={"test_known": "declared by the project"},
        )

    return factory
"""

TESTS = """
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.proxy_difference("fake", reason="it differs")
async def test_marked_and_fails(conformance_proxy):
    assert False


@pytest.mark.proxy_difference("fake[v1]", reason="was fixed")
async def test_marked_but_passes(conformance_proxy):
    pass


@pytest.mark.proxy_difference("other", reason="not this one")
async def test_other_implementation(conformance_proxy):
    pass


async def test_known(conformance_proxy):
    assert False


async def test_plain_failure(conformance_proxy):
    assert 1 == 2
"""


def test_differences_are_strict_and_reported(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(TESTS))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-q",
            f"--conformance-report={report}",
            str(tmp_path / "test_fake.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr  # XPASS(strict) + a real failure
    records = {r["test"]: r for r in json.loads(report.read_text())["records"]}
    outcomes = {name: r["outcome"] for name, r in records.items()}
    assert outcomes == {
        "test_marked_and_fails": "xfailed",
        "test_marked_but_passes": "xpassed",
        "test_other_implementation": "passed",
        "test_known": "xfailed",
        "test_plain_failure": "failed",
    }, done.stdout
    assert "it differs" in records["test_marked_and_fails"]["reason"]
    assert "declared by the project" in records["test_known"]["reason"]
    assert {r["implementation"] for r in records.values()} == {"fake[v1]"}


LACKING_CONFTEST = """
import contextlib

import pytest

from eventproxy.testing import ProxyUnderTest


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(
    params=[
        "full",
        pytest.param(
            "small",
            marks=pytest.mark.conformance_lacks(
                "foreign_routes", "restart", label="fake[small]", reason="it has no such thing"
            ),
        ),
    ]
)
def conformance_proxy_factory(request):
    @contextlib.asynccontextmanager
    async def factory(*, host_routing, hub_url):
        yield ProxyUnderTest(
            proxy=object(), public_url="http://127.0.0.1:1", implementation="fake",
            variant=request.param,
        )

    return factory
"""

LACKING_TESTS = """
import pytest

pytestmark = pytest.mark.anyio


@pytest.mark.conformance_needs("foreign_routes")
async def test_needs_foreign(conformance_proxy):
    pass


@pytest.mark.conformance_needs("last_activity")
async def test_needs_other(conformance_proxy):
    pass


async def test_needs_nothing(conformance_proxy):
    pass
"""


def _child_pytest(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(tmp_path / "pytest.ini"),
            "--rootdir",
            str(tmp_path),
            "-p",
            "no:cacheprovider",
            "-q",
            "-rA",
            *extra,
            str(tmp_path / "test_fake.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_declared_lack_is_not_generated_and_is_reported(tmp_path: Path) -> None:
    """A configuration marked ``conformance_lacks`` gets no test needing what it lacks: the test
    is deselected (not skipped), the others run, and the report names it with the reason."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(textwrap.dedent(LACKING_CONFTEST))
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(LACKING_TESTS))
    report = tmp_path / "report.json"
    done = _child_pytest(tmp_path, f"--conformance-report={report}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 passed, 1 deselected" in done.stdout, done.stdout
    assert "skipped" not in done.stdout, done.stdout
    ran = {
        (r["test"], r["implementation"]): r["outcome"]
        for r in json.loads(report.read_text())["records"]
    }
    assert ran == {
        ("test_needs_foreign", "fake[full]"): "passed",
        ("test_needs_foreign", "fake[small]"): "not generated",
        ("test_needs_other", "fake[full]"): "passed",
        ("test_needs_other", "fake[small]"): "passed",
        ("test_needs_nothing", "fake[full]"): "passed",
        ("test_needs_nothing", "fake[small]"): "passed",
    }
    records = json.loads(report.read_text())["records"]
    (lacking,) = [r for r in records if r["outcome"] == "not generated"]
    assert lacking["reason"] == "it has no such thing"


def test_an_unknown_feature_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(LACKING_CONFTEST).replace('"restart"', '"teleport"')
    )
    (tmp_path / "test_fake.py").write_text(textwrap.dedent(LACKING_TESTS))
    done = _child_pytest(tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr  # pytest's usage error
    assert "unknown feature(s) ['teleport']" in done.stderr, done.stderr
    assert "foreign_routes" in done.stderr  # the known ones are listed
