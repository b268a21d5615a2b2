"""Listeners: Unix socket, TLS, clean shutdown on cancellation; backend connect timeout."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress
import socket
import ssl
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from eventproxy_dataplane import DataPlane, ProxySettings
from support import port_accepts
from support.backends import HTTPBackend, HTTPClient, make_table, raw_exchange, status_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


def _settings() -> ProxySettings:
    from support.backends import PROXY_IO_EDGE, PROXY_PARSER

    return ProxySettings(io_edge=PROXY_IO_EDGE[0], parser=PROXY_PARSER[0])


async def test_unix_socket_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "proxy.sock")
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}), _settings())
        await tg.start(plane.serve_unix, path)
        async with await anyio.connect_unix(path) as stream:
            client = HTTPClient(stream)
            reply = await client.request("GET", "/over-unix")
            assert reply.status == 200
            got = backend.requests[0]
            assert got.header(b"x-forwarded-for") is None  # no peer IP on a Unix socket
            assert got.header(b"x-forwarded-proto") == b"http"
        tg.cancel_scope.cancel()
    assert not Path(path).exists()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_tls_listener_sets_forwarded_proto_https(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}), _settings())
        port = await tg.start(
            functools.partial(plane.serve_tcp, ssl_context=server_ctx), "127.0.0.1", 0
        )
        stream = await anyio.connect_tcp(
            "127.0.0.1", port, tls=True, ssl_context=client_ctx, tls_standard_compatible=False
        )
        async with HTTPClient(stream) as client:
            reply = await client.request("GET", "/secure", host="hub.example")
            assert reply.status == 200
            assert (await client.request("GET", "/again", host="hub.example")).status == 200
        got = backend.requests[0]
        assert got.header(b"x-forwarded-proto") == b"https"
        assert got.header(b"x-forwarded-port") == b"443"
        tg.cancel_scope.cancel()


async def test_cancelling_serve_closes_listener_and_connections() -> None:
    async with anyio.create_task_group() as outer:
        backend = HTTPBackend()
        await outer.start(backend.serve)
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}), _settings())
        async with anyio.create_task_group() as serving:
            port = await serving.start(plane.serve_tcp, "127.0.0.1", 0)
            client = await HTTPClient.connect(port)
            assert (await client.request("GET", "/")).status == 200
            assert backend.open_connections == 1  # the pooled backend connection
            serving.cancel_scope.cancel()
        # serve_tcp has returned: the client connection, the pool and the listener are closed
        with anyio.fail_after(5):
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await client.stream.receive()
            while backend.open_connections:  # noqa: ASYNC110 - polls a counter
                await anyio.sleep(0.02)
        await client.aclose()
        assert not port_accepts(port)
        outer.cancel_scope.cancel()


class _Listener:
    """One ``serve_*`` of a plane in its own cancel scope, so a test can stop it alone."""

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.ended = anyio.Event()

    async def start(self, tg: anyio.abc.TaskGroup, serve: Any, *args: object) -> Any:
        async def run(*, task_status: anyio.abc.TaskStatus[Any]) -> None:
            try:
                with self.scope:
                    await serve(*args, task_status=task_status)
            finally:
                self.ended.set()

        return await tg.start(run)

    async def stop(self) -> None:
        self.scope.cancel()
        with anyio.fail_after(5):
            await self.ended.wait()


async def test_the_plane_sweeps_once_however_many_listeners_and_the_last_closes_the_pool(
    tmp_path: Path,
) -> None:
    """TCP, Unix and admin listeners on one plane: one pool sweep runs at a time (the admin
    listener runs none); stopping a listener leaves the pool to the others, and a remaining
    listener takes the sweep over; the pool is closed when the last proxy listener stops."""
    sweeping = [0, 0]  # [running now, started in all]
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        settings = dataclasses.replace(_settings(), pool_idle_timeout=2.0)
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}), settings)
        maintain = plane.pool.maintain

        async def counted() -> None:
            sweeping[0] += 1
            sweeping[1] += 1
            try:
                await maintain()
            finally:
                sweeping[0] -= 1

        plane.pool.maintain = counted  # type: ignore[method-assign]
        tcp, unix, admin = _Listener(), _Listener(), _Listener()
        path = str(tmp_path / "proxy.sock")
        port = await tcp.start(tg, plane.serve_tcp, "127.0.0.1", 0)
        await admin.start(tg, plane.serve_admin, "127.0.0.1", 0)
        await unix.start(tg, plane.serve_unix, path)
        await anyio.wait_all_tasks_blocked()
        assert sweeping == [1, 1]

        async with await HTTPClient.connect(port) as client:
            assert (await client.request("GET", "/one")).status == 200
        assert plane.pool.idle_count == 1 and backend.open_connections == 1
        await admin.stop()  # not a proxy listener: the pool and the sweep are untouched
        assert sweeping == [1, 1]
        async with await HTTPClient.connect(port) as client:
            assert (await client.request("GET", "/two")).status == 200
        assert plane.backend_connections_opened == 1  # the pooled connection was reused

        await tcp.stop()  # it held the sweep: the Unix listener takes it over
        await anyio.wait_all_tasks_blocked()
        assert sweeping == [1, 2]
        assert plane.pool.idle_count == 1 and backend.open_connections == 1  # not closed
        with anyio.fail_after(10):  # the sweep now run by the Unix listener times it out
            while plane.pool.closed["timeout"] == 0:  # noqa: ASYNC110 - polls a counter
                await anyio.sleep(0.05)

        async with HTTPClient(await anyio.connect_unix(path)) as client:
            assert (await client.request("GET", "/three")).status == 200
        assert plane.pool.idle_count == 1
        await unix.stop()  # the last proxy listener: the pool is closed with it
        assert sweeping == [0, 2]
        assert plane.pool.idle_count == 0
        with anyio.fail_after(5):
            while backend.open_connections:  # noqa: ASYNC110 - polls a counter
                await anyio.sleep(0.02)
        tg.cancel_scope.cancel()


async def test_504_when_backend_does_not_accept_in_time() -> None:
    # A listening socket whose accept queue is full: further SYNs are dropped, so a connect
    # neither succeeds nor fails until the proxy's connect timeout.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(0)
    port = blocker.getsockname()[1]
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        settings = dataclasses.replace(_settings(), connect_timeout=0.5)
        table = make_table({"r": ("PathPrefix(`/`)", [f"http://127.0.0.1:{port}"])})
        plane = DataPlane(table, settings)
        async with anyio.create_task_group() as tg:
            proxy_port = await tg.start(plane.serve_tcp, "127.0.0.1", 0)
            out = await raw_exchange(
                proxy_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert status_of(out) == 504
            assert 'kind="timeout"' in plane.metrics_text()
            tg.cancel_scope.cancel()
    finally:
        for s in fillers:
            s.close()
        blocker.close()
