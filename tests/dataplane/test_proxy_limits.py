"""The client-connection cap (``max_connections``) and an accept loop that survives EMFILE.

Real sockets on every edge: with the cap reached, a new connection is closed at once (no bytes,
no hang) while the open ones keep being served; once one closes, new ones are accepted again.
A node whose descriptors run out (a cap above its ``ulimit -n``) keeps its accept loop: it
neither dies nor spins, and serves again when connections close.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import eventproxy_dataplane
from eventproxy_dataplane import ProxySettings
from eventproxy_dataplane._limits import ConnectionGate, default_max_connections
from support import LOOPBACK, child_process, free_port, port_accepts
from support.backends import HTTPBackend, HTTPClient, make_table, running_proxy

SRC = str(Path(eventproxy_dataplane.__file__).resolve().parent.parent)


# -- the pure pieces --------------------------------------------------------------------------
def test_default_cap_leaves_room_for_backends_and_the_pool() -> None:
    assert default_max_connections(1024, 256) == 288  # (1024 - 64 - 128 - 256) // 2
    assert default_max_connections(65536, 256) == 32544
    assert default_max_connections(200, 256) == 16  # never below 16
    assert default_max_connections(None, 256) == 100_000


def test_gate_counts_and_refuses() -> None:
    gate = ConnectionGate(2)
    assert gate.admit() and gate.admit()
    assert not gate.admit() and gate.refused == 1 and gate.open == 2
    gate.leave()
    assert gate.admit() and gate.open == 2
    with pytest.raises(ValueError, match="at least 1"):
        ConnectionGate(0)
    gate.leave()
    gate.leave()
    with pytest.raises(RuntimeError, match="without a matching admit"):
        gate.leave()


def test_settings_refuse_a_bad_cap() -> None:
    from eventproxy_dataplane import SettingsError

    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(SettingsError, match="max_connections"):
            ProxySettings(max_connections=bad)  # type: ignore[arg-type]


# -- the cap on real sockets, every edge --------------------------------------------------------
async def _refused(port: int) -> bytes:
    """Connect and read: what a refused connection gives (nothing, then EOF or a reset)."""
    stream = await anyio.connect_tcp(LOOPBACK, port)
    try:
        with anyio.fail_after(5):
            try:
                return await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                return b""
    finally:
        await anyio.aclose_forcefully(stream)


async def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Until ``predicate()`` (the gate's own count; it has no event to wait on), at most 10 s."""
    with anyio.fail_after(10):
        while not predicate():  # noqa: ASYNC110 - polls the count the proxy keeps
            await anyio.sleep(0.01)


@pytest.mark.anyio
async def test_cap_refuses_new_connections_and_serves_the_open_ones(io_edge: str) -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, ProxySettings(max_connections=3)) as proxy:
            gate = proxy.plane.gate
            clients = [await HTTPClient.connect(proxy.port) for _ in range(3)]
            for i, client in enumerate(clients):
                assert (await client.request("GET", f"/c{i}")).status == 200
            assert gate.open == 3
            # the cap is reached: a fourth connection is closed at once, without an answer
            assert await _refused(proxy.port) == b""
            assert await _refused(proxy.port) == b""
            assert gate.refused == 2 and gate.open == 3
            # ... while the open ones are still served, again and again
            for client in clients:
                assert (await client.request("GET", "/again")).status == 200
            metrics = proxy.plane.metrics_text()
            assert "eventproxy_dataplane_connections_refused_total 2" in metrics
            assert "eventproxy_dataplane_max_connections 3" in metrics
            # one closes: a new connection is accepted and served again
            await clients.pop().aclose()
            await _wait_for(lambda: gate.open == 2, "the proxy to see the close")
            async with await HTTPClient.connect(proxy.port) as fresh:
                assert (await fresh.request("GET", "/fresh")).status == 200
                assert gate.open == 3
                assert await _refused(proxy.port) == b""
            for client in clients:
                await client.aclose()
            await _wait_for(lambda: gate.open == 0, "every connection to be released")
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_cap_holds_for_unix_listener(io_edge: str, tmp_path: Path) -> None:
    from eventproxy_dataplane import DataPlane
    from support.backends import PROXY_IO_EDGE

    path = str(tmp_path / "p.sock")
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        settings = ProxySettings(max_connections=1, io_edge=PROXY_IO_EDGE[0])
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}), settings)
        await tg.start(plane.serve_unix, path)
        async with HTTPClient(await anyio.connect_unix(path)) as first:
            assert (await first.request("GET", "/one")).status == 200
            second = await anyio.connect_unix(path)
            with anyio.fail_after(5):
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    assert await second.receive() == b""
            await anyio.aclose_forcefully(second)
            assert (await first.request("GET", "/still")).status == 200
            assert plane.gate.refused == 1
        tg.cancel_scope.cancel()


# -- EMFILE: a node whose descriptors run out -------------------------------------------------
def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _get(port: int, path: str) -> int:
    with socket.create_connection((LOOPBACK, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = s.recv(64)
    return int(head.split()[1])


@contextlib.contextmanager
def _node(tmp_path: Path, backend_url: str, loop: str, edge: str, nofile: int) -> Iterator[int]:
    config = tmp_path / "dynamic.toml"
    config.write_text(
        '[http.routers.r]\nrule = "PathPrefix(`/`)"\nservice = "s"\n'
        f'[[http.services.s.loadBalancer.servers]]\nurl = "{backend_url}"\n'
    )
    port, admin = free_port(), free_port()
    node = [
        "-m", "eventproxy_dataplane", "--config", str(config), "--listen", f"{LOOPBACK}:{port}",
        "--admin", f"{LOOPBACK}:{admin}", "--loop", loop, "--io-edge", edge,
        "--max-connections", "10000",
    ]  # fmt: skip
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1])); os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    env = {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    with child_process(
        [sys.executable, "-c", launcher, *node],
        log_path=tmp_path / "node.log",
        ready=lambda: port_accepts(port) and port_accepts(admin),
        what="the data-plane node",
        env=env,
    ) as child:
        yield child.pid, port  # type: ignore[misc]


@pytest.mark.parametrize(
    ("loop", "edge"), [("asyncio", "auto"), ("asyncio", "anyio"), ("trio", "auto")]
)
def test_accept_loop_survives_running_out_of_descriptors(
    tmp_path: Path, loop: str, edge: str
) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Ok(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((LOOPBACK, 0), Ok)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        with _node(tmp_path, f"http://{LOOPBACK}:{server.server_address[1]}", loop, edge, 64) as (
            pid,
            port,
        ):
            assert _get(port, "/before") == 200
            held = []
            for _ in range(120):  # more than 64 descriptors: the node's accept hits EMFILE
                held.append(socket.create_connection((LOOPBACK, port), timeout=10))
            time.sleep(0.5)  # let the node accept what it can and hit the limit
            before, started = _cpu_seconds(pid), time.monotonic()
            time.sleep(2.0)
            spent = _cpu_seconds(pid) - before
            waited = time.monotonic() - started
            assert spent < 0.25 * waited, (
                f"the accept loop spins: {spent:.2f}s CPU in {waited:.1f}s"
            )
            assert Path(f"/proc/{pid}").exists()  # alive
            for s in held:
                s.close()
            # descriptors are free again: the same listener serves new connections
            deadline = time.monotonic() + 15
            while True:
                try:
                    if _get(port, "/after") == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the node never accepted again"
                time.sleep(0.1)
            log = (tmp_path / "node.log").read_text()
            assert "Traceback" not in log or "accept" not in log.split("Traceback", 1)[1][:2000]
    finally:
        server.shutdown()
        server.server_close()
