"""Route log backends for the shared contract suite: each test gets a fresh log per backend."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from eventproxy import RouteLog, open_log
from eventproxy.log import forget_memory_logs

_names = itertools.count()
LogOpener = Callable[..., Awaitable[RouteLog]]


@pytest.fixture(autouse=True)
def _forget_memory_logs() -> Iterator[None]:
    yield
    forget_memory_logs()


@pytest.fixture(params=["memory", "file"])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for a new, empty log of each local backend (etcd joins in its own tier)."""
    if request.param == "memory":
        return f"memory://contract-{next(_names)}"
    return f"file://{tmp_path / 'routes.log'}"


@pytest.fixture
def open_route_log(log_url: str) -> LogOpener:
    """Open (or reopen) the log at ``log_url``; the test closes what it opens."""

    async def opener(**kwargs: object) -> RouteLog:
        return await open_log(log_url, **kwargs)  # type: ignore[arg-type]

    return opener
