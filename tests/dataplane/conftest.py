"""Fixtures for the data-plane tests."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator

import pytest

from support import backends

# The (anyio backend, I/O edge) pairs that exist. "auto" is the asyncio callback edge on asyncio
# (stock loop, and uvloop when installed) and the anyio edge on trio, so "anyio" on trio would
# only repeat "auto": never generated.
BACKEND_EDGES = [
    (("asyncio", {"debug": False}), "auto", "asyncio-auto"),
    (("asyncio", {"debug": False}), "anyio", "asyncio-anyio"),
    (("trio", {}), "auto", "trio-auto"),
]
if importlib.util.find_spec("uvloop") is not None:
    # the callback edge on uvloop (what a standalone node runs on)
    BACKEND_EDGES.append((("asyncio", {"use_uvloop": True}), "auto", "uvloop-auto"))
PARSERS = backends.PARSERS


@pytest.hookimpl(tryfirst=True)
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test using ``io_edge`` runs once per parser x pair of BACKEND_EDGES (not x backends)."""
    if "io_edge" in metafunc.fixturenames:
        metafunc.parametrize(
            ("anyio_backend", "io_edge"),
            [
                pytest.param(backend, (edge, parser), id=f"{name}-{parser}")
                for parser in PARSERS
                for backend, edge, name in BACKEND_EDGES
            ],
            indirect=["io_edge"],
        )


@pytest.fixture
def io_edge(request: pytest.FixtureRequest, anyio_backend: object) -> Iterator[str]:
    """The I/O edge (and the parser) running_proxy() starts the proxy with (parametrised with
    the backend above); the edge's name."""
    edge, parser = request.param
    previous = backends.PROXY_IO_EDGE[0], backends.PROXY_PARSER[0]
    backends.PROXY_IO_EDGE[0] = edge
    backends.PROXY_PARSER[0] = parser
    yield edge
    backends.PROXY_IO_EDGE[0], backends.PROXY_PARSER[0] = previous
