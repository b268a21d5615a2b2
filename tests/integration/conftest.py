"""Fixtures for the integration tier (real JupyterHub, node, traefik, etcd).

JupyterHub pins asyncio, so every async test here runs on asyncio only (the root conftest
parametrises asyncio and trio). Fixtures in this file are shared between helpers: keep their
names namespaced (``conformance_*``, ...).
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: JupyterHub's Proxy API (aiohttp, tornado) runs on asyncio."""
    return "asyncio"
