"""Fixtures for the chart tests: the real ``helm`` binary, and manifests rendered with it.

``nox -s chart`` installs helm (``tests/support/helm.py``); without it these tests fail when
``CI=true`` and skip on a developer's machine. The Zero to JupyterHub chart is the unmodified
copy in ``../shared/vendor/zero-to-jupyterhub/jupyterhub`` beside the repository
(``$EVENTPROXY_SHARED_DIR`` names another ``shared`` directory).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from chart_support import ALL_OPTIONS, CHART, Manifest, Render, helm_template, z2jh_chart

from support.helm import HelmMissing, require_helm


def _missing(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} (CI=true: the chart tests must run)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def helm() -> Path:
    try:
        return require_helm()
    except HelmMissing as err:
        _missing(str(err))
        raise  # not reached


@pytest.fixture(scope="session")
def kubernetes_validate() -> Any:
    """The ``kubernetes-validate`` package (PyPI; ``nox -s chart`` installs it)."""
    try:
        import kubernetes_validate as module
    except ImportError:
        _missing("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return module


@pytest.fixture(scope="session")
def z2jh(helm: Path) -> Path:
    chart = z2jh_chart()
    if not (chart / "Chart.yaml").exists():
        _missing(f"the vendored z2jh chart is not at {chart} (set EVENTPROXY_SHARED_DIR)")
    return chart


@pytest.fixture(scope="session")
def render(helm: Path) -> Render:
    """Render our chart: ``render(values=[...], set_values=[...])``."""

    def run(**kwargs: Any) -> list[Manifest]:
        return helm_template(helm, CHART, **kwargs)

    return run


@pytest.fixture(scope="session")
def default_manifests(render: Render) -> list[Manifest]:
    return render()


@pytest.fixture(scope="session")
def all_options_manifests(render: Render) -> list[Manifest]:
    return render(values=[ALL_OPTIONS])


@pytest.fixture(scope="session", params=["default", "all-options"])
def manifests(
    request: pytest.FixtureRequest,
    default_manifests: list[Manifest],
    all_options_manifests: list[Manifest],
) -> list[Manifest]:
    return default_manifests if request.param == "default" else all_options_manifests
