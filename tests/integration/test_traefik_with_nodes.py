"""``data_plane = "traefik"`` with ``data_plane_endpoints``: two real traefik replicas (etcd
provider) and one real ``eventproxy dataplane`` node, all following one etcd log. ``add_route``
returns once all three route the change: each is requested the moment it returns (no wait, no
retry). A node that is gone fails the call naming it (``require_all_endpoints``), or is left out
with a warning (``False``, as ``eventproxy demo --ha`` runs); the node's activity shows in
``get_all_routes``. The in-process plane confirms on nodes beside it the same way."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from hub_support import shared_backend
from test_etcd_node import Node

from eventproxy import EventProxy, VisibilityTimeoutError, open_log
from support import LOOPBACK, free_port
from support.etcd import Etcd, require_etcd, running_etcd
from support.traefik import Traefik, require_traefik

pytestmark = [pytest.mark.anyio, pytest.mark.services]

ROOT_KEY = "ep-nodes"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # JupyterHub's Proxy (EventProxy's base) runs on asyncio only


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


@pytest.fixture
def replicas(tmp_path: Path, etcd: Etcd) -> Iterator[list[Traefik]]:
    require_traefik()
    extra = [
        f"--providers.etcd.endpoints={LOOPBACK}:{etcd.client_port}",
        f"--providers.etcd.rootkey={ROOT_KEY}",
    ]
    started: list[Traefik] = []
    try:
        for i in range(2):
            (tmp_path / f"t{i}").mkdir()
            started.append(Traefik(tmp_path / f"t{i}", extra_args=extra))
        yield started
    finally:
        for t in started:
            t.stop()


async def test_every_change_is_confirmed_on_both_replicas_and_the_node(
    tmp_path: Path, etcd: Etcd, replicas: list[Traefik], caplog: pytest.LogCaptureFixture
) -> None:
    url = f"etcd://{LOOPBACK}:{etcd.client_port}/with-nodes"
    (tmp_path / "node").mkdir()
    node = Node(tmp_path / "node", url)
    await asyncio.to_thread(node.start)
    admin = f"http://{LOOPBACK}:{node.admin}"
    log = logging.getLogger("test-traefik-with-nodes")
    proxy = EventProxy(
        public_url=f"http://{LOOPBACK}:{free_port()}/",
        log_url=url,
        data_plane="traefik",
        should_start=False,
        traefik_root_key=ROOT_KEY,
        traefik_api_urls=[f"http://{LOOPBACK}:{t.api_port}" for t in replicas],
        traefik_activity_interval=0,
        data_plane_endpoints=[admin],
        visibility_timeout=4.0,
        log=log,
    )
    fronts = [f"http://{LOOPBACK}:{t.web_port}" for t in replicas] + [
        f"http://{LOOPBACK}:{node.port}"
    ]
    try:
        with shared_backend() as backend:
            target = f"http://{LOOPBACK}:{backend}"
            async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
                for i in range(10):
                    await proxy.add_route(f"/user/u{i}/", target, {"i": i})
                    for front in fronts:  # no wait, no retry: all three route it on return
                        r = await client.get(f"{front}/user/u{i}/lab")
                        assert r.status_code == 200, (i, front, r.status_code)
                await proxy.delete_route("/user/u0/")
                for front in fronts:
                    r = await client.get(f"{front}/user/u0/lab")
                    assert r.status_code == 404, (front, r.status_code)
                # requests through the node show in last_activity (traefik's scrape is off);
                # a route no request has reached yet: a node records a router's activity at
                # most once a second, and the loop above may have used /user/u5/ just now
                await proxy.add_route("/user/act/", target, {})
                now = datetime.now(UTC)
                before = now.replace(microsecond=now.microsecond // 1000 * 1000)
                r = await client.get(f"{fronts[2]}/user/act/api")
                assert r.status_code == 200
                routes = await proxy.get_all_routes()
                assert len(routes) == 10
                last = datetime.fromisoformat(routes["/user/act/"]["data"]["last_activity"])
                assert last >= before, (last, before)
                one = await proxy.get_route("/user/act/")
                assert one is not None and one["data"]["last_activity"] == _iso(last)

            # the node goes: the change is durable and routed by traefik, but the call fails,
            # naming the node (and not the replicas, which have it)
            assert node.child is not None
            os.kill(node.child.pid, signal.SIGKILL)
            node.child.proc.wait(10)
            with pytest.raises(VisibilityTimeoutError) as info:
                await proxy.add_route("/user/late/", target, {})
            assert admin in str(info.value)
            assert all(f":{t.api_port}" not in str(info.value) for t in replicas)
            async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
                for front in fronts[:2]:
                    assert (await client.get(f"{front}/user/late/x")).status_code == 200

            # require_all_endpoints = False: the node is left out with a warning naming it
            proxy.require_all_endpoints = False
            assert proxy._external is not None
            proxy._external.require_all = False
            caplog.set_level(logging.WARNING, logger="test-traefik-with-nodes")
            await proxy.add_route("/user/ok/", target, {})
            assert any(admin in r.getMessage() for r in caplog.records), caplog.text
            async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
                for front in fronts[:2]:
                    assert (await client.get(f"{front}/user/ok/x")).status_code == 200
    finally:
        await proxy.stop()
        node.stop()


async def test_a_listed_node_that_never_answers_fails_the_start(tmp_path: Path) -> None:
    """traefik started by EventProxy serves, but a listed node does not answer: start() fails
    naming the node (JupyterHub then does not start behind a half-confirmed data plane)."""
    require_traefik()
    dead = f"http://{LOOPBACK}:{free_port()}"
    proxy = EventProxy(
        public_url=f"http://{LOOPBACK}:{free_port()}/",
        log_url=f"file://{tmp_path}/routes.log",
        data_plane="traefik",
        traefik_activity_interval=0,
        data_plane_endpoints=[dead],
        visibility_timeout=3.0,
    )
    try:
        with pytest.raises(VisibilityTimeoutError, match=dead.replace(".", r"\.")):
            await proxy.start()
    finally:
        await proxy.stop()


async def test_the_inprocess_plane_confirms_on_a_node_beside_it(tmp_path: Path) -> None:
    """The same with ``data_plane = "inprocess"`` (and a file log the node follows): each add is
    served by the hub's own plane and by the node when it returns; the node gone fails it."""
    url = f"file://{tmp_path}/routes.log"
    async with await open_log(url):  # created by its writer; the node only reads it
        pass
    (tmp_path / "node").mkdir()
    node = Node(tmp_path / "node", url)
    await asyncio.to_thread(node.start)
    admin = f"http://{LOOPBACK}:{node.admin}"
    proxy = EventProxy(
        public_url=f"http://{LOOPBACK}:{free_port()}/",
        log_url=url,
        data_plane_endpoints=[admin],
        visibility_timeout=3.0,
    )
    fronts = [proxy.public_url.rstrip("/"), f"http://{LOOPBACK}:{node.port}"]
    try:
        with shared_backend() as backend:
            await proxy.start()
            target = f"http://{LOOPBACK}:{backend}"
            async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
                for i in range(5):
                    await proxy.add_route(f"/user/u{i}/", target, {})
                    for front in fronts:  # no wait, no retry
                        r = await client.get(f"{front}/user/u{i}/lab")
                        assert r.status_code == 200, (i, front, r.status_code)
            assert node.child is not None
            os.kill(node.child.pid, signal.SIGKILL)
            node.child.proc.wait(10)
            with pytest.raises(VisibilityTimeoutError, match=admin.replace(".", r"\.")):
                await proxy.add_route("/user/late/", target, {})
    finally:
        await proxy.stop()
        node.stop()
