"""The projection changes the data plane only through ``DataPlane.apply`` (issue 7, item 5).

Each test shows one symptom of the old way (the projection mutating ``plane.table`` behind the
plane's back): the generation never moved, removed routers' activity and counters were kept
forever, and a re-added routespec reported the previous server's ``last_activity``. Real
sockets: requests go through the plane to a loopback backend, so activity is recorded as in
production.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import pytest

from eventproxy import Record, RouteAdded, RouteRemoved, open_log
from eventproxy.log import RouteLog
from eventproxy.projection import PlaneProjection
from eventproxy.serve import follow_log, serve_log
from eventproxy.traefik import name_for
from eventproxy_dataplane import DataPlane, RoutingTable
from support import free_port
from support.backends import LOOPBACK, HTTPBackend, HTTPClient, running_proxy

pytestmark = pytest.mark.anyio

ALICE = "/user/alice/"


@dataclass
class Stage:
    log: RouteLog
    projection: PlaneProjection
    plane: DataPlane
    port: int
    backends: tuple[HTTPBackend, HTTPBackend]

    async def write(self, *events: RouteAdded | RouteRemoved) -> None:
        await self.log.append(list(events))
        self.projection.apply(await self.log.read(self.projection.seq + 1))

    async def get(self, path: str) -> int:
        async with await HTTPClient.connect(self.port) as client:
            return (await client.request("GET", path)).status


@asynccontextmanager
async def stage() -> AsyncIterator[Stage]:
    one, two = HTTPBackend(name="one"), HTTPBackend(name="two")
    async with anyio.create_task_group() as tg:
        await tg.start(one.serve)
        await tg.start(two.serve)
        async with running_proxy(RoutingTable()) as proxy:
            log = await open_log("memory://")
            projection = PlaneProjection(proxy.plane)
            try:
                yield Stage(log, projection, proxy.plane, proxy.port, (one, two))
            finally:
                await log.aclose()
        tg.cancel_scope.cancel()


async def test_every_projected_batch_moves_the_generation() -> None:
    async with stage() as s:
        start = s.plane.generation
        await s.write(RouteAdded(ALICE, s.backends[0].url))
        assert s.plane.generation == start + 1
        await s.write(RouteAdded("/user/bob/", s.backends[1].url), RouteRemoved(ALICE))
        assert s.plane.generation == start + 2
        assert s.plane.metrics_text().count(f"config_generation {start + 2}") == 1


async def test_removed_routers_activity_and_counters_are_forgotten() -> None:
    async with stage() as s:
        await s.write(RouteAdded(ALICE, s.backends[0].url))
        assert await s.get("/user/alice/lab") == 200
        name = name_for(ALICE)
        assert name in s.plane.activity()
        assert f'router="{name}"' in s.plane.metrics_text()
        await s.write(RouteRemoved(ALICE))
        assert name not in s.plane.activity()
        assert f'router="{name}"' not in s.plane.metrics_text()
        assert await s.get("/user/alice/lab") == 404


async def test_a_readded_routespec_starts_with_no_activity() -> None:
    async with stage() as s:
        one, two = s.backends
        name = name_for(ALICE)
        await s.write(RouteAdded(ALICE, one.url))
        assert await s.get("/user/alice/") == 200
        assert name in s.plane.activity()
        # removed, then added again (her next server) in a later batch
        await s.write(RouteRemoved(ALICE))
        await s.write(RouteAdded(ALICE, two.url))
        assert name not in s.plane.activity()
        assert await s.get("/user/alice/") == 200
        assert name in s.plane.activity()
        # removed and re-added to another server within one batch: also a fresh start
        await s.write(RouteRemoved(ALICE), RouteAdded(ALICE, one.url))
        assert name not in s.plane.activity()
        # the same route written again (same server): its activity is kept
        assert await s.get("/user/alice/") == 200
        await s.write(RouteAdded(ALICE, one.url))
        assert name in s.plane.activity()


async def test_eventproxy_style_readd_reports_no_previous_last_activity() -> None:
    """What JupyterHub sees through get_route: the plane's activity joined to the table."""
    async with stage() as s:
        await s.write(RouteAdded(ALICE, s.backends[0].url, {"user": "alice"}))
        assert await s.get("/user/alice/api") == 200
        await s.write(RouteRemoved(ALICE))
        await s.write(RouteAdded(ALICE, s.backends[1].url, {"user": "alice"}))
        activity = s.plane.activity()
        assert {spec for spec in s.projection.table if name_for(spec) in activity} == set()


async def test_a_log_following_node_reports_a_moving_generation_on_health() -> None:
    url = "memory://health-generation"
    writer = await open_log(url)
    await writer.append([RouteAdded(ALICE, "http://127.0.0.1:1")])
    admin = free_port()
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: serve_log(
                    url, [(LOOPBACK, 0)], admin=(LOOPBACK, admin), task_status=task_status
                )
            )
            first = (await health(admin))["generation"]
            assert isinstance(first, int)
            for n in range(3):
                await writer.append([RouteAdded(f"/user/u{n}/", "http://127.0.0.1:2")])
                while (await health(admin))["generation"] != first + n + 1:  # noqa: ASYNC110
                    await anyio.sleep(0.02)  # the node applies the record as it arrives
            tg.cancel_scope.cancel()
    await writer.aclose()


async def health(port: int) -> dict[str, object]:
    async with await HTTPClient.connect(port) as client:
        reply = await client.request("GET", "/health")
        assert reply.status == 200
        doc: dict[str, object] = json.loads(reply.body)
        return doc


async def test_a_following_node_applies_what_it_is_behind_by_in_batches() -> None:
    """Issue 7 item 6: the follower reads what the log holds past it and applies it in batches
    (one plane change per batch), instead of one record at a time."""
    url = "memory://batches"
    writer = await open_log(url)
    plane = DataPlane(RoutingTable())
    projection = PlaneProjection(plane)
    sizes: list[int] = []
    done = anyio.Event()
    original = projection.apply

    def counting_apply(records: list[Record]) -> None:
        sizes.append(len(records))
        original(records)
        if projection.seq == 2001:
            done.set()

    projection.apply = counting_apply  # type: ignore[method-assign]
    await writer.append([RouteAdded("/user/first/", "http://127.0.0.1:1")])
    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            await tg.start(follow_log, url, projection)
            generation = plane.generation
            await writer.append(
                [RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{2 + i % 50}") for i in range(2000)]
            )
            await done.wait()
            tg.cancel_scope.cancel()
    await writer.aclose()
    assert sum(sizes) == 2000
    assert len(sizes) <= 3, sizes  # the record that woke it, then the rest in one read
    assert plane.generation - generation == len(sizes)
    assert len(plane.table) == 2001
