"""The test helpers' promise: a missing external program fails the run in CI, skips elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from support import require_binary

MISSING = "eventproxy-no-such-binary"


def test_present_binary_is_found() -> None:
    assert require_binary("python", "-", path=sys.executable) == Path(sys.executable)
    assert require_binary("sh", "apt-get install -y dash").name == "sh"


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_binary_fails_in_ci_naming_it(monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} not found on PATH.*apt-get foo"):
        require_binary(MISSING, "apt-get foo")
    with pytest.raises(pytest.fail.Exception, match=f"{MISSING} not found at /nowhere/x"):
        require_binary(MISSING, "pip install x", path="/nowhere/x")


@pytest.mark.parametrize("ci", [None, "", "false", "0"])
def test_missing_binary_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    with pytest.raises(pytest.skip.Exception, match=f"{MISSING} not found on PATH.*apt-get foo"):
        require_binary(MISSING, "apt-get foo")
