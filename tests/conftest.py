"""Test configuration shared by every tier.

Async tests run through anyio's pytest plugin on both asyncio and trio; a test module that must
stay on asyncio (JupyterHub pins it) overrides ``anyio_backend``.
"""

from __future__ import annotations

import pytest


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param
