"""``etcds://``: the etcd log over TLS, verifying the members with a CA file and presenting a
client certificate (etcd started with ``--client-cert-auth``), on asyncio and trio. Certificates
are made for the test with certipy (a JupyterHub dependency)."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import pytest
from certipy import Certipy

from eventproxy import LogUnavailableError, RouteAdded, open_log
from eventproxy_dataplane.etcd import EtcdOptions
from support import LOOPBACK, ChildProcess, free_port, port_accepts, wait_until
from support.etcd import require_etcd

pytestmark = [pytest.mark.anyio, pytest.mark.services]


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": False}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> object:
    return request.param


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, str]]]:
    binary = require_etcd()
    work = tmp_path_factory.mktemp("etcd-tls")
    store = Certipy(store_dir=str(work / "certs"))
    ca = store.create_ca("ca")["files"]
    server = store.create_signed_pair("server", "ca", alt_names=[f"IP:{LOOPBACK}"])["files"]
    client = store.create_signed_pair("client", "ca")["files"]
    other = store.create_ca("other")["files"]
    port, peer = free_port(), free_port()
    child = ChildProcess(
        [
            str(binary),
            "--name",
            "tls",
            "--data-dir",
            str(work / "data"),
            "--listen-client-urls",
            f"https://{LOOPBACK}:{port}",
            "--advertise-client-urls",
            f"https://{LOOPBACK}:{port}",
            "--listen-peer-urls",
            f"http://{LOOPBACK}:{peer}",
            "--initial-advertise-peer-urls",
            f"http://{LOOPBACK}:{peer}",
            "--initial-cluster",
            f"tls=http://{LOOPBACK}:{peer}",
            "--cert-file",
            server["cert"],
            "--key-file",
            server["key"],
            "--trusted-ca-file",
            ca["cert"],
            "--client-cert-auth",
            "--log-level",
            "warn",
        ],
        log_path=work / "etcd.log",
    )
    try:
        wait_until(
            lambda: port_accepts(port), timeout=30, what="etcd (TLS)", alive=child.check_alive
        )
        files = {
            "ca": ca["cert"],
            "cert": client["cert"],
            "key": client["key"],
            "other_ca": other["cert"],
        }
        yield port, files
    finally:
        child.stop()


async def test_tls_with_a_client_certificate(tls_etcd: tuple[int, dict[str, str]]) -> None:
    port, files = tls_etcd
    url = f"etcds://{LOOPBACK}:{port}/tls"
    options = EtcdOptions(ca_file=files["ca"], cert_file=files["cert"], key_file=files["key"])
    with anyio.fail_after(30):
        while True:  # the member may still be electing itself
            try:
                log = await open_log(url, etcd=options)
                break
            except LogUnavailableError:
                await anyio.sleep(0.2)
    async with log:
        seqs = await log.append([RouteAdded("/user/tls/", "http://127.0.0.1:9", {})])
        got = []
        with anyio.fail_after(10):
            async for record in log.watch(seqs[0]):  # the watch goes over TLS too
                got.append(record.seq)
                break
        assert got == seqs

    # no client certificate: refused in the TLS handshake, named as such
    with pytest.raises(LogUnavailableError) as info:
        await open_log(url, etcd=EtcdOptions(ca_file=files["ca"]))
    assert f"https://{LOOPBACK}:{port}" in str(info.value)
    # a CA that did not sign the member's certificate: verification fails, named as such
    with pytest.raises(LogUnavailableError, match=r"(?i)certificate|TLS|SSL"):
        await open_log(
            url,
            etcd=EtcdOptions(
                ca_file=files["other_ca"], cert_file=files["cert"], key_file=files["key"]
            ),
        )
