"""The standalone node (``python -m eventproxy_dataplane``) in a child process: config file
reloads, admin endpoints, and 1 GiB streamed through it with bounded memory."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

import eventproxy_dataplane
from eventproxy_dataplane.cli import main
from support import child_process, free_port, port_accepts
from support.backends import HTTPBackend, HTTPClient
from support.etcd import require_etcd, running_etcd

pytestmark = pytest.mark.anyio

SRC = str(Path(eventproxy_dataplane.__file__).resolve().parent.parent)
GIB = 1 << 30


def _config(routes: dict[str, str]) -> str:
    """A file-provider TOML document: {prefix: backend url}."""
    lines = []
    for i, (prefix, url) in enumerate(routes.items()):
        lines += [
            f"[http.routers.r{i}]",
            f'rule = "PathPrefix(`{prefix}`)"',
            f'service = "s{i}"',
            f"[[http.services.s{i}.loadBalancer.servers]]",
            f'url = "{url}"',
        ]
    return "\n".join(lines) + "\n"


def _rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@contextlib.asynccontextmanager
async def _node(tmp_path: Path, config: str, loop: str) -> AsyncIterator[tuple[int, int, int]]:
    """Start the CLI in a child process; yield (pid, proxy port, admin port)."""
    config_path = tmp_path / "dynamic.toml"
    config_path.write_text(config)
    port, admin = free_port(), free_port()
    argv = [
        sys.executable, "-m", "eventproxy_dataplane", "--config", str(config_path),
        "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}", "--loop", loop,
    ]  # fmt: skip
    env = {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    cm = child_process(
        argv,
        log_path=tmp_path / "node.log",
        ready=lambda: port_accepts(port) and port_accepts(admin),
        what="the data-plane node",
        env=env,
    )
    # waiting polls sockets with blocking calls: keep them off the event loop
    child = await anyio.to_thread.run_sync(cm.__enter__)
    try:
        yield child.pid, port, admin
    finally:
        await anyio.to_thread.run_sync(cm.__exit__, None, None, None)


def _loop(anyio_backend: object) -> str:
    name = anyio_backend[0] if isinstance(anyio_backend, tuple) else str(anyio_backend)
    return "trio" if name == "trio" else "asyncio"


async def test_one_gib_streams_through_the_node_with_bounded_memory(
    tmp_path: Path, anyio_backend: object
) -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        config = _config({"/": backend.url})
        async with _node(tmp_path, config, _loop(anyio_backend)) as (pid, port, _):
            async with await HTTPClient.connect(port) as c:
                assert (await c.request("GET", "/bytes/1000000")).status == 200  # warm up
            baseline = _rss_kib(pid, "VmRSS")
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(
                    b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % GIB
                )
                got = 0
                with anyio.fail_after(60):
                    while True:
                        try:
                            got += len(await s.receive(1 << 20))
                        except anyio.EndOfStream:
                            break
            assert got > GIB
            # and 1 GiB the other way: a streamed upload
            async with await anyio.connect_tcp("127.0.0.1", port) as s:
                await s.send(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n" % GIB
                )
                piece = b"u" * (1 << 20)
                with anyio.fail_after(60):
                    for _ in range(GIB // len(piece)):
                        await s.send(piece)
                    answer = b""
                    while True:
                        try:
                            answer += await s.receive()
                        except anyio.EndOfStream:
                            break
            assert b'"body_size": %d' % GIB in answer
            peak = _rss_kib(pid, "VmHWM")
            growth_mib = (peak - baseline) / 1024
            print(f"node RSS: baseline {baseline / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB")
            assert growth_mib < 50, f"RSS grew by {growth_mib:.1f} MiB"
        tg.cancel_scope.cancel()


async def test_node_reloads_the_config_file_and_serves_admin(
    tmp_path: Path, anyio_backend: object
) -> None:
    async with anyio.create_task_group() as tg:
        one, two = HTTPBackend(name="one"), HTTPBackend(name="two")
        await tg.start(one.serve)
        await tg.start(two.serve)
        async with _node(tmp_path, _config({"/a/": one.url}), _loop(anyio_backend)) as (
            _,
            port,
            admin,
        ):
            async with await HTTPClient.connect(port) as c:
                assert (await c.request("GET", "/a/x")).json()["backend"] == "one"
                assert (await c.request("GET", "/b/x")).status == 404
                tmp = tmp_path / "next.toml"
                tmp.write_text(_config({"/a/": one.url, "/b/": two.url}))
                tmp.replace(tmp_path / "dynamic.toml")
                with anyio.fail_after(10):
                    while (await c.request("GET", "/b/x")).status == 404:  # noqa: ASYNC110
                        await anyio.sleep(0.05)
                assert (await c.request("GET", "/b/x")).json()["backend"] == "two"
                assert (await c.request("GET", "/a/x")).json()["backend"] == "one"
            async with await HTTPClient.connect(admin) as c:
                health = await c.request("GET", "/health")
                assert health.json()["status"] == "ok" and health.json()["generation"] >= 2
                metrics = (await c.request("GET", "/metrics")).body.decode()
                assert 'eventproxy_dataplane_requests_total{router="r1",code="2xx"}' in metrics
        tg.cancel_scope.cancel()


async def test_node_follows_traefik_kv_in_etcd(tmp_path: Path, anyio_backend: object) -> None:
    require_etcd()
    async with anyio.create_task_group() as tg:
        one, two = HTTPBackend(name="one"), HTTPBackend(name="two")
        await tg.start(one.serve)
        await tg.start(two.serve)
        cm = running_etcd(tmp_path / "etcd")
        etcd = await anyio.to_thread.run_sync(cm.__enter__)
        try:
            await anyio.to_thread.run_sync(
                etcd.put_many,
                {
                    "traefik/http/routers/a/rule": "PathPrefix(`/a/`)",
                    "traefik/http/routers/a/service": "a",
                    "traefik/http/services/a/loadBalancer/servers/0/url": one.url,
                },
            )
            port = free_port()
            argv = [
                sys.executable, "-m", "eventproxy_dataplane", "--etcd", etcd.url,
                "--listen", f"127.0.0.1:{port}", "--loop", _loop(anyio_backend),
            ]  # fmt: skip
            env = {"PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
            node = child_process(
                argv,
                log_path=tmp_path / "node.log",
                ready=lambda: port_accepts(port),
                what="the data-plane node",
                env=env,
            )
            await anyio.to_thread.run_sync(node.__enter__)
            try:
                async with await HTTPClient.connect(port) as c:
                    assert (await c.request("GET", "/a/x")).json()["backend"] == "one"
                    await anyio.to_thread.run_sync(
                        etcd.put_many,
                        {
                            "traefik/http/routers/b/rule": "PathPrefix(`/b/`)",
                            "traefik/http/routers/b/service": "b",
                            "traefik/http/services/b/loadBalancer/servers/0/url": two.url,
                        },
                    )
                    with anyio.fail_after(10):
                        while (await c.request("GET", "/b/x")).status == 404:  # noqa: ASYNC110
                            await anyio.sleep(0.05)
                    assert (await c.request("GET", "/b/x")).json()["backend"] == "two"
            finally:
                await anyio.to_thread.run_sync(node.__exit__, None, None, None)
        finally:
            await anyio.to_thread.run_sync(cm.__exit__, None, None, None)
        tg.cancel_scope.cancel()


def test_cli_rejects_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--config", "x.toml", "--listen", "nope"])
    assert exc.value.code == 2
    assert "expected HOST:PORT" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--listen", "127.0.0.1:1"])  # no source
    assert "one of the arguments --config --etcd is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "x.toml", "--header-timeout", "-1"])
    assert "positive number of seconds" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config", "x.toml", "--error-target", "ftp://x"])
    assert "error_target" in capsys.readouterr().err


def test_module_entry_point_prints_help() -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    out = subprocess.run(
        [sys.executable, "-m", "eventproxy_dataplane", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=True,
    )
    assert "--listen" in out.stdout and "--etcd" in out.stdout


def test_max_body_bytes_option() -> None:
    from eventproxy_dataplane.cli import build_parser, settings_from_args

    parser = build_parser()
    args = parser.parse_args(["--config", "x.toml", "--max-body-bytes", "1048576"])
    assert settings_from_args(args).max_body_bytes == 1048576
    assert settings_from_args(parser.parse_args(["--config", "x.toml"])).max_body_bytes is None
    for bad in ("0", "-5", "lots"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--config", "x.toml", "--max-body-bytes", bad])
