"""The RouteLog contract suite (tests/core/test_log_contract.py) run against a real etcd, on
asyncio and trio, plus what only etcd has: concurrent writers in separate clients, a watch that
survives an etcd restart and an etcd compaction, requests split under etcd's size limit."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from core.test_log_contract import *  # noqa: F403 - the shared contract, collected here again
from eventproxy import RouteLog, open_log
from support.etcd import Etcd, require_etcd, running_etcd

_prefixes = itertools.count()


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    """The etcd log is used by the hub (asyncio) and by nodes (asyncio or trio): both."""
    return request.param


@pytest.fixture(scope="module")
def contract_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path_factory.mktemp("etcd")) as etcd:
        yield etcd


@pytest.fixture
def log_url(contract_etcd: Etcd) -> str:
    return f"etcd://127.0.0.1:{contract_etcd.client_port}/contract-{next(_prefixes)}"


@pytest.fixture
def open_route_log(log_url: str):  # type: ignore[no-untyped-def]
    async def opener(**kwargs: object) -> RouteLog:
        return await open_log(log_url, **kwargs)  # type: ignore[arg-type]

    return opener


pytestmark = [pytest.mark.anyio, pytest.mark.services]
