"""The data-plane projection and a log-following node, in-process on asyncio and trio."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from eventproxy import RouteAdded, RouteRemoved, RouteTable, open_log
from eventproxy.projection import PlaneProjection
from eventproxy.serve import follow_log
from eventproxy.traefik import name_for
from eventproxy_dataplane import DataPlane, RoutingTable

pytestmark = pytest.mark.anyio


def routed(plane: DataPlane, path: str) -> str | None:
    route = plane.table.lookup("example.org", path.encode())
    return None if route is None else route.service.servers[0].url


async def test_projection_applies_only_differences() -> None:
    log = await open_log("memory://")
    plane = DataPlane(RoutingTable())
    projection = PlaneProjection(plane)
    await log.append([RouteAdded("/user/a/", "http://127.0.0.1:1"), RouteAdded("/", "http://h:2")])
    projection.apply(await log.read(1))
    assert routed(plane, "/user/a/x") == "http://127.0.0.1:1"
    assert routed(plane, "/hub/") == "http://h:2"
    await log.append([RouteAdded("/user/a/", "http://127.0.0.1:3"), RouteRemoved("/")])
    projection.apply(await log.read(3))
    assert routed(plane, "/user/a/x") == "http://127.0.0.1:3"
    assert routed(plane, "/hub/") is None
    assert set(plane.table.routers()) == {name_for("/user/a/")}
    projection.reset(RouteTable())
    assert len(plane.table) == 0


async def test_a_node_follows_appends_and_compactions() -> None:
    url = "memory://follow"
    writer = await open_log(url)
    await writer.append([RouteAdded("/user/a/", "http://127.0.0.1:1")])
    plane = DataPlane(RoutingTable())
    projection = PlaneProjection(plane)
    applied = anyio.Event()
    original_apply = projection.apply

    def apply_and_signal(records: object) -> None:
        original_apply(records)  # type: ignore[arg-type]
        applied.set()

    projection.apply = apply_and_signal  # type: ignore[method-assign]
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            assert await tg.start(follow_log, url, projection) == 1
            assert routed(plane, "/user/a/") == "http://127.0.0.1:1"
            await writer.append([RouteAdded("/user/b/", "http://127.0.0.1:2")])
            await applied.wait()
            assert routed(plane, "/user/b/z") == "http://127.0.0.1:2"
            applied = anyio.Event()
            await writer.append([RouteRemoved("/user/a/")])
            await applied.wait()
            assert routed(plane, "/user/a/") is None
            await writer.compact(retention=timedelta(0))
            applied = anyio.Event()
            await writer.append([RouteAdded("/user/c/", "http://127.0.0.1:4")])
            await applied.wait()
            assert routed(plane, "/user/c/") == "http://127.0.0.1:4"
            tg.cancel_scope.cancel()
    await writer.aclose()
