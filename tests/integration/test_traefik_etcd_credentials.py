"""A traefik started by EventProxy reads an authenticated etcd, and an etcd over TLS with a client
certificate: the credentials (``etcd_username``/``etcd_password``, ``etcd_ca_file``,
``etcd_cert_file``/``etcd_key_file``) go into the static configuration the hub writes, which is
owner-only (0600, in a 0700 directory); the password is in no argv, no log line and no file
anyone else can read. Real etcd (auth enabled; TLS with a CA made for the test by certipy, a
JupyterHub dependency), real traefik, every add requested through traefik when it returns.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from certipy import Certipy

from eventproxy import EventProxy
from support import LOOPBACK, ChildProcess, free_port, port_accepts, wait_until
from support.etcd import Etcd, require_etcd, running_etcd
from support.traefik import require_traefik

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # EventProxy lives in JupyterHub's asyncio loop


@pytest.fixture
async def backend() -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = head.split(b"\r\n", 1)[0]
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    yield f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    server.close()


@pytest.fixture
def auth_etcd(tmp_path: Path) -> Iterator[tuple[Etcd, str]]:
    require_etcd()
    password = secrets.token_urlsafe(16)
    with running_etcd(tmp_path / "etcd") as etcd:
        etcd.call("/v3/auth/user/add", {"name": "root", "password": password})
        etcd.call("/v3/auth/role/add", {"name": "root"})
        etcd.call("/v3/auth/user/grant", {"user": "root", "role": "root"})
        etcd.call("/v3/auth/enable", {})
        yield etcd, password


@pytest.fixture
def tls_etcd(tmp_path: Path) -> Iterator[tuple[int, dict[str, str]]]:
    binary = require_etcd()
    work = tmp_path / "etcd-tls"
    store = Certipy(store_dir=str(work / "certs"))
    ca = store.create_ca("ca")["files"]
    server = store.create_signed_pair("server", "ca", alt_names=[f"IP:{LOOPBACK}"])["files"]
    client = store.create_signed_pair("client", "ca")["files"]
    port, peer = free_port(), free_port()
    child = ChildProcess(
        [
            str(binary),
            "--name", "tls",
            "--data-dir", str(work / "data"),
            "--listen-client-urls", f"https://{LOOPBACK}:{port}",
            "--advertise-client-urls", f"https://{LOOPBACK}:{port}",
            "--listen-peer-urls", f"http://{LOOPBACK}:{peer}",
            "--initial-advertise-peer-urls", f"http://{LOOPBACK}:{peer}",
            "--initial-cluster", f"tls=http://{LOOPBACK}:{peer}",
            "--cert-file", server["cert"],
            "--key-file", server["key"],
            "--trusted-ca-file", ca["cert"],
            "--client-cert-auth",
            "--log-level", "warn",
        ],
        log_path=work / "etcd.log",
    )  # fmt: skip
    try:
        wait_until(
            lambda: port_accepts(port), timeout=30, what="etcd (TLS)", alive=child.check_alive
        )
        yield port, {"ca": ca["cert"], "cert": client["cert"], "key": client["key"]}
    finally:
        child.stop()


def _proxy(log_url: str, logger: logging.Logger, **etcd: str) -> EventProxy:
    require_traefik()
    return EventProxy(
        public_url=f"http://{LOOPBACK}:{free_port()}/",
        log_url=log_url,
        data_plane="traefik",
        traefik_activity_interval=0,
        visibility_timeout=20,
        log=logger,
        **etcd,
    )


async def _routes_through_traefik(proxy: EventProxy, backend: str) -> None:
    async with httpx.AsyncClient(base_url=proxy.public_url) as client:
        for i in range(3):
            await proxy.add_route(f"/user/u{i}/", backend, {})
            r = await client.get(f"/user/u{i}/x")  # no wait, no retry
            assert r.status_code == 200 and r.text == f"GET /user/u{i}/x HTTP/1.1", r.text
        await proxy.delete_route("/user/u1/")
        assert (await client.get("/user/u1/x")).status_code == 404


def _private_files(directory: Path, secret: str) -> None:
    """Every file holding ``secret`` under ``directory`` is owner-only; the directory too."""
    assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
    holders = []
    for path in directory.rglob("*"):
        if path.is_file() and secret in path.read_text(errors="replace"):
            holders.append(path.name)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert holders == ["traefik.toml"]  # the static configuration, and nothing else


async def test_managed_traefik_reads_an_authenticated_etcd(
    auth_etcd: tuple[Etcd, str], backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    etcd, password = auth_etcd
    logger = logging.getLogger("test-traefik-etcd-auth")
    caplog.set_level(logging.DEBUG, logger="test-traefik-etcd-auth")
    proxy = _proxy(
        f"etcd://{LOOPBACK}:{etcd.client_port}/auth",
        logger,
        etcd_username="root",
        etcd_password=password,
    )
    await proxy.start()
    try:
        assert proxy._traefik is not None and proxy._traefik.process is not None
        assert proxy._traefik.provider == "etcd"
        await _routes_through_traefik(proxy, backend)
        layout = proxy._traefik.layout
        assert layout is not None
        _private_files(layout.directory, password)
        pid = proxy._traefik.process.pid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert password.encode() not in cmdline and b"--configFile=" in cmdline
        assert "traefik:" in caplog.text  # traefik's own output did reach the hub's log...
    finally:
        await proxy.stop()
    assert password not in caplog.text  # ...and the password never did


async def test_managed_traefik_reads_etcd_over_tls_with_a_client_certificate(
    tls_etcd: tuple[int, dict[str, str]], backend: str
) -> None:
    port, files = tls_etcd
    proxy = _proxy(
        f"etcds://{LOOPBACK}:{port}/tls",
        logging.getLogger("test-traefik-etcd-tls"),
        etcd_ca_file=files["ca"],
        etcd_cert_file=files["cert"],
        etcd_key_file=files["key"],
    )
    await proxy.start()
    try:
        assert proxy._traefik is not None and proxy._traefik.layout is not None
        static = proxy._traefik.layout.static_path.read_text()
        assert files["key"] in static and files["ca"] in static
        await _routes_through_traefik(proxy, backend)
    finally:
        await proxy.stop()
