"""The traefik projectors against real services: etcd (KV layout), traefik (file and etcd
providers), with a file route log as the source.

* the KV projector coalesces a burst into few txns (etcd's default 128-op limit), leaves etcd
  holding exactly the projection with the applied seq = log head, removes deleted routes' keys;
* two projector replicas on one etcd end in the same state, applying each change once;
* a lost prefix is re-projected;
* traefik (etcd provider and file provider) routes JupyterHub's escaped names with the
  projection's rules, spelled the way JupyterHub spells them, and nothing else.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventproxy import RouteAdded, RouteRemoved, open_log
from eventproxy.projectors import GatewayKV, Limits, TraefikFileProjector, TraefikKVProjector
from eventproxy.projectors.traefik_config import kv_pairs, marker_key, marker_rule, our_pairs
from eventproxy.traefik_api import TraefikAPI
from support import LOOPBACK
from support.etcd import Etcd, require_etcd
from support.traefik import Traefik, require_traefik

pytestmark = [pytest.mark.services, pytest.mark.anyio]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        e.stop()


NAMES = [
    "/user/walnut/%24p~c%7Ca%21%20ch@rs/",
    "/user/walnut/%23%3F/",
    "/user/%C3%BCnic%C3%B8de/",
    "/user/a@b.c/",
    "/user/~tilde/",
    "/user/walnut/",
    "/user/plain/",
]


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.ident.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def echo_ports() -> Iterator[list[int]]:
    servers = []
    for i in range(len(NAMES)):
        server = ThreadingHTTPServer((LOOPBACK, 0), _Echo)
        server.ident = NAMES[i]  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
    yield [int(s.server_address[1]) for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def _ask(port: int, target: str) -> str:
    """GET ``target`` (sent byte for byte) through traefik; the backend's id, or the status."""
    with socket.create_connection((LOOPBACK, port), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: hub.test\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1].decode()
    return body.decode() if status == "200" else status


async def _wait_routed(api: TraefikAPI, provider: str, seq: int) -> None:
    with anyio.fail_after(20):
        while True:  # polling another process's API: there is no event to wait on
            if await api.routed_seq(provider) >= seq:
                return
            await anyio.sleep(0.01)


def _check_routing(port: int) -> None:
    for name in NAMES:
        assert _ask(port, name + "lab") == name, name
        assert _ask(port, name.rstrip("/")) == name, name
    # a name followed by more is not the route: it falls to the shorter /user/walnut/ or 404
    assert _ask(port, "/user/walnut/%24p~c%7Ca%21%20ch@rsX/lab") == "/user/walnut/"
    assert _ask(port, "/user/plainer/") == "404"
    # the all-raw spelling routes too
    assert _ask(port, "/user/walnut/$p~c%7Ca!%20ch@rs/lab") == NAMES[0]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _log_with(tmp_path: Path, events: list[Any]) -> Any:
    log = await open_log(f"file://{tmp_path / 'routes.log'}")
    for i in range(0, len(events), 500):
        await log.append(events[i : i + 500])
    return log


async def test_kv_projector_burst_removals_and_head(etcd: Etcd, tmp_path: Path) -> None:
    root = "t-burst"
    adds = [RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{2000 + i}", {}) for i in range(1000)]
    log = await _log_with(tmp_path, adds)
    kv = GatewayKV(etcd.url)
    projector = TraefikKVProjector(kv, root)
    try:
        await projector.reset(await log.load_table())
        # 1000 routes x 5 keys under etcd's default limit of 128 ops per txn
        assert projector.txns_sent <= 1000 * 5 // 120 + 2
        removals = [RouteRemoved(f"/user/u{i}/") for i in range(0, 1000, 2)]
        await log.append(removals)
        before = projector.txns_sent
        await projector.apply(await log.read(projector.seq + 1))
        assert projector.txns_sent - before <= 500 * 2 // 120 + 2  # a range delete per prefix
        table = await log.load_table()
        stored = our_pairs(etcd.get_prefix(root + "/"), root)
        assert stored == kv_pairs(table, root)
        assert stored[marker_key(root)] == marker_rule(await log.head())
        assert await projector.applied_seq() == await log.head() == 1500
        assert not any("u0_2f" in k for k in stored)  # removed route: no key left
    finally:
        await kv.aclose()
        await log.aclose()


async def test_kv_burst_is_one_txn_when_etcd_allows(etcd: Etcd, tmp_path: Path) -> None:
    root = "t-one"
    log = await _log_with(
        tmp_path, [RouteAdded(f"/user/u{i}/", "http://127.0.0.1:1", {}) for i in range(20)]
    )
    kv = GatewayKV(etcd.url)
    projector = TraefikKVProjector(kv, root)
    try:
        await projector.reset(await log.load_table())
        assert projector.txns_sent == 1
        await log.append([RouteAdded(f"/user/v{i}/", "http://127.0.0.1:2", {}) for i in range(20)])
        await projector.apply(await log.read(projector.seq + 1))
        assert projector.txns_sent == 2  # 20 adds -> 1 txn
    finally:
        await kv.aclose()
        await log.aclose()


async def test_two_replicas_apply_each_change_once(etcd: Etcd, tmp_path: Path) -> None:
    root = "t-two"
    log = await _log_with(
        tmp_path, [RouteAdded(f"/user/u{i}/", "http://127.0.0.1:1", {}) for i in range(50)]
    )
    kvs = [GatewayKV(etcd.url), GatewayKV(etcd.url)]
    a, b = (TraefikKVProjector(kv, root, limits=Limits(max_ops=40)) for kv in kvs)
    try:
        table = await log.load_table()
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.reset, table)
            tg.start_soon(b.reset, table)
        for round_ in range(5):
            await log.append(
                [RouteAdded(f"/user/r{round_}-{i}/", "http://127.0.0.1:3", {}) for i in range(30)]
                + [RouteRemoved(f"/user/u{round_ * 10 + i}/") for i in range(10)]
            )
            records = await log.read(a.seq + 1)
            async with anyio.create_task_group() as tg:
                tg.start_soon(a.apply, records)
                tg.start_soon(b.apply, records)
        table = await log.load_table()
        assert our_pairs(etcd.get_prefix(root + "/"), root) == kv_pairs(table, root)
        assert await a.applied_seq() == table.seq
        # each change was written by one of them: together about one replica's txns
        single = TraefikKVProjector(
            GatewayKV(etcd.url), root + "-single", limits=Limits(max_ops=40)
        )
        await single.reset(await log.load_table(at=50))
        await single.apply(await log.read(51))
        await single.kv.aclose()
        assert a.txns_sent + b.txns_sent <= single.txns_sent + 2 * 5
    finally:
        for kv in kvs:
            await kv.aclose()
        await log.aclose()


async def test_lost_prefix_and_hand_edits_are_reprojected(etcd: Etcd, tmp_path: Path) -> None:
    root = "t-lost"
    log = await _log_with(
        tmp_path, [RouteAdded(f"/user/u{i}/", "http://127.0.0.1:1", {}) for i in range(10)]
    )
    kv = GatewayKV(etcd.url)
    projector = TraefikKVProjector(kv, root)
    try:
        await projector.reset(await log.load_table())
        etcd.delete(root + "/", prefix=True)  # jupyterhub/traefik-proxy #247
        await log.append([RouteAdded("/user/new/", "http://127.0.0.1:2", {})])
        await projector.apply(await log.read(projector.seq + 1))  # compare fails -> re-project
        table = await log.load_table()
        assert our_pairs(etcd.get_prefix(root + "/"), root) == kv_pairs(table, root)
    finally:
        await kv.aclose()
        await log.aclose()


async def _routes_log(tmp_path: Path, ports: list[int]) -> Any:
    events: list[Any] = [
        RouteAdded(n, f"http://{LOOPBACK}:{p}", {}) for n, p in zip(NAMES, ports, strict=True)
    ]
    events.append(RouteAdded("/user/gone/", f"http://{LOOPBACK}:{ports[0]}", {}))
    events.append(RouteRemoved("/user/gone/"))
    return await _log_with(tmp_path, events)


async def test_traefik_etcd_provider_routes_jupyterhub_names(
    etcd: Etcd, tmp_path: Path, echo_ports: list[int]
) -> None:
    require_traefik()
    root = "t-route"
    log = await _routes_log(tmp_path, echo_ports)
    (tmp_path / "traefik").mkdir()
    traefik = Traefik(
        tmp_path / "traefik",
        extra_args=[
            f"--providers.etcd.endpoints={LOOPBACK}:{etcd.client_port}",
            f"--providers.etcd.rootkey={root}",
        ],
    )
    kv = GatewayKV(etcd.url)
    api = TraefikAPI(f"http://{LOOPBACK}:{traefik.api_port}")
    try:
        projector = TraefikKVProjector(kv, root)
        await projector.reset(await log.load_table())
        await _wait_routed(api, "etcd", await log.head())
        await anyio.to_thread.run_sync(_check_routing, traefik.web_port)
        assert await anyio.to_thread.run_sync(_ask, traefik.web_port, "/user/gone/") == "404"
    finally:
        await api.aclose()
        await kv.aclose()
        await log.aclose()
        traefik.stop()


async def test_traefik_file_provider_routes_jupyterhub_names(
    tmp_path: Path, echo_ports: list[int]
) -> None:
    require_traefik()
    log = await _routes_log(tmp_path, echo_ports)
    (tmp_path / "traefik").mkdir()
    (tmp_path / "proj").mkdir()
    path = tmp_path / "proj" / "routes.toml"
    traefik = Traefik(
        tmp_path / "traefik",
        extra_args=[f"--providers.file.directory={path.parent}"],
    )
    api = TraefikAPI(f"http://{LOOPBACK}:{traefik.api_port}")
    try:
        projector = TraefikFileProjector(path)
        await projector.reset(await log.load_table())
        assert await projector.applied_seq() == await log.head()
        await _wait_routed(api, "file", await log.head())
        await anyio.to_thread.run_sync(_check_routing, traefik.web_port)
        # a change is a whole new file; traefik routes it
        await log.append([RouteRemoved(NAMES[-1])])
        await projector.apply(await log.read(projector.seq + 1))
        await _wait_routed(api, "file", await log.head())
        assert await anyio.to_thread.run_sync(_ask, traefik.web_port, NAMES[-1]) == "404"
    finally:
        await api.aclose()
        await log.aclose()
        traefik.stop()
