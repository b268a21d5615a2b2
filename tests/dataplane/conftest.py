"""Fixtures for the data-plane tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import backends

# The (anyio backend, I/O edge) pairs that exist. "auto" is the asyncio-protocol edge on asyncio
# and the anyio edge on trio, so "anyio" on trio would only repeat "auto": never generated.
BACKEND_EDGES = [
    pytest.param(("asyncio", {"debug": False}), "auto", id="asyncio-auto"),
    pytest.param(("asyncio", {"debug": False}), "anyio", id="asyncio-anyio"),
    pytest.param(("trio", {}), "auto", id="trio-auto"),
]


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test using ``io_edge`` runs once per pair of BACKEND_EDGES (not backends x edges)."""
    if "io_edge" in metafunc.fixturenames:
        metafunc.parametrize(("anyio_backend", "io_edge"), BACKEND_EDGES, indirect=["io_edge"])


@pytest.fixture
def io_edge(request: pytest.FixtureRequest, anyio_backend: object) -> Iterator[str]:
    """The I/O edge running_proxy() starts the proxy on (parametrised with the backend above)."""
    previous = backends.PROXY_IO_EDGE[0]
    backends.PROXY_IO_EDGE[0] = request.param
    yield request.param
    backends.PROXY_IO_EDGE[0] = previous
