"""Fixtures for the data-plane tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from support import backends


@pytest.fixture(params=["auto", "anyio"])
def io_edge(request: pytest.FixtureRequest, anyio_backend: object) -> Iterator[str]:
    """Run a proxy test on each I/O edge: "auto" (asyncio protocols on asyncio) and "anyio".

    On trio both are the anyio edge, so the "anyio" variant is skipped there.
    """
    backend = anyio_backend[0] if isinstance(anyio_backend, tuple) else anyio_backend
    if request.param == "anyio" and backend != "asyncio":
        pytest.skip("on trio the anyio edge is the only edge")
    previous = backends.PROXY_IO_EDGE[0]
    backends.PROXY_IO_EDGE[0] = request.param
    yield request.param
    backends.PROXY_IO_EDGE[0] = previous
