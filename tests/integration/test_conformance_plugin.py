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
