"""``data_plane = "external"``: EventProxy on an etcd log, two ``eventproxy dataplane`` nodes.
add_route returns once both nodes route it (the first request through either is 200); a node
down fails the call naming it (require_all_endpoints) or warns (majority); last_activity is the
latest of the nodes'."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hub_support import shared_backend
from test_etcd_node import Node

from eventproxy import EventProxy, VisibilityTimeoutError
from support import free_port
from support.etcd import Etcd, require_etcd, running_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


async def test_external_nodes_confirm_every_change(
    tmp_path: Path, etcd: Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"etcd://127.0.0.1:{etcd.client_port}/external"
    nodes = [Node(tmp_path / f"n{i}", url) for i in range(2)]
    for node in nodes:
        (tmp_path / node.log_path.parent.name).mkdir(exist_ok=True)
        await asyncio.to_thread(node.start)
    endpoints = [f"http://127.0.0.1:{n.admin}" for n in nodes]
    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{free_port()}/",
        log_url=url,
        data_plane="external",
        data_plane_endpoints=endpoints,
        visibility_timeout=3.0,
    )
    try:
        with shared_backend() as backend:
            target = f"http://127.0.0.1:{backend}"
            await proxy.start()
            async with httpx.AsyncClient() as client:
                for i in range(20):
                    await proxy.add_route(f"/user/u{i}/", target, {"i": i})
                    for node in nodes:  # no wait, no retry
                        r = await client.get(f"http://127.0.0.1:{node.port}/user/u{i}/lab")
                        assert r.status_code == 200, (i, node.port, r.status_code)
                await proxy.delete_route("/user/u0/")
                for node in nodes:
                    r = await client.get(f"http://127.0.0.1:{node.port}/user/u0/lab")
                    assert r.status_code == 404
                # activity on node 1 shows in get_all_routes
                await client.get(f"http://127.0.0.1:{nodes[1].port}/user/u5/x")
                routes = await proxy.get_all_routes()
                assert "last_activity" in routes["/user/u5/"]["data"]
                assert len(routes) == 19

            # one node down: the call fails naming it; the change is durable all the same
            assert nodes[1].child is not None
            nodes[1].child.kill()
            with pytest.raises(VisibilityTimeoutError) as info:
                await proxy.add_route("/user/late/", target, {})
            assert endpoints[1] in str(info.value) and endpoints[0] not in str(info.value)
            # require_all_endpoints = False: a majority is enough (1 of 2 is not) ...
            proxy.require_all_endpoints = False
            assert proxy._external is not None
            proxy._external.require_all = False
            with pytest.raises(VisibilityTimeoutError, match="majority"):
                await proxy.add_route("/user/late2/", target, {})
        # ... with three endpoints, 2 of 3 is: a warning names the missing one
        proxy._external.endpoints.append(f"http://127.0.0.1:{free_port()}")
        await asyncio.to_thread(nodes[1].start)
        with caplog.at_level(logging.WARNING):
            await proxy.add_route("/user/ok/", "http://127.0.0.1:1", {})
        assert any("2 of 3 data-plane nodes" in r.getMessage() for r in caplog.records)
    finally:
        await proxy.stop()
        for node in nodes:
            node.stop()
