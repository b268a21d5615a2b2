"""Configuration sources for real: a watched file rewritten on disk, and a real etcd.

The etcd tests start ``.venv/bin/etcd`` on free loopback ports (``support.etcd``) and stop and
restart it in the middle of a watch.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from eventproxy_dataplane import ConfigProblem, DynamicConfig
from eventproxy_dataplane._errors import ConfigSourceError
from eventproxy_dataplane._sources import load_config_file, watch_etcd, watch_file
from support.etcd import Etcd, running_etcd

Snapshot = tuple[DynamicConfig, list[ConfigProblem]]


def toml_doc(*routers: str) -> str:
    lines = []
    for r in routers:
        lines += [f"[http.routers.{r}]", f'rule = "PathPrefix(`/{r}/`)"', 'service = "s"', ""]
    lines += ["[http.services.s.loadBalancer]", 'servers = [{url = "http://127.0.0.1:1"}]', ""]
    return "\n".join(lines)


class Watch:
    def __init__(self, receive: MemoryObjectReceiveStream[Snapshot]) -> None:
        self.receive = receive

    async def next(self, until: Callable[[Snapshot], bool] = lambda s: True) -> Snapshot:
        """The first snapshot (from now) that satisfies ``until``."""
        with anyio.fail_after(15):
            while True:
                snap = await self.receive.receive()
                if until(snap):
                    return snap


def routers_are(*names: str) -> Callable[[Snapshot], bool]:
    return lambda s: set(s[0].routers) == set(names) and not s[1]


@pytest.fixture
async def watching() -> AsyncIterator[Callable[..., object]]:
    async with anyio.create_task_group() as tg:
        send, receive = anyio.create_memory_object_stream[Snapshot](1000)

        def start(fn: Callable[..., object], *args: object, **kw: object) -> Watch:
            async def run() -> None:
                await fn(*args, lambda c, p: send.send_nowait((c, p)), **kw)  # type: ignore[misc]

            tg.start_soon(run)
            return Watch(receive)

        yield start
        tg.cancel_scope.cancel()
    send.close()
    receive.close()


async def write(path: Path, text: str) -> None:
    await anyio.Path(path).write_text(text)


async def replace_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    await anyio.Path(tmp).write_text(text)
    await anyio.to_thread.run_sync(os.replace, tmp, path)


# -- file --------------------------------------------------------------------------------------
@pytest.mark.anyio
async def test_file_changes_are_picked_up(tmp_path: Path, watching: Callable[..., Watch]) -> None:
    path = tmp_path / "dynamic.toml"
    await write(path, toml_doc("a"))
    w = watching(watch_file, path, interval=0.02)
    await w.next(routers_are("a"))
    await write(path, toml_doc("a", "b"))  # in place
    await w.next(routers_are("a", "b"))
    await replace_atomically(path, toml_doc("c"))  # rename over the file
    await w.next(routers_are("c"))


@pytest.mark.anyio
async def test_broken_file_keeps_last_good_config_until_fixed(
    tmp_path: Path, watching: Callable[..., Watch]
) -> None:
    path = tmp_path / "dynamic.toml"
    await write(path, toml_doc("a"))
    w = watching(watch_file, path, interval=0.02)
    await w.next(routers_are("a"))
    await replace_atomically(path, "[http.routers.x\nrule = ")
    config, problems = await w.next(lambda s: bool(s[1]))
    assert set(config.routers) == {"a"}  # still the last good one
    assert problems[0].where == str(path)
    assert "not valid TOML" in problems[0].message
    assert "keeping the last good" in problems[0].message
    await write(path, toml_doc("a", "fixed"))
    await w.next(routers_are("a", "fixed"))
    await anyio.Path(path).unlink()
    config, problems = await w.next(lambda s: bool(s[1]))
    assert set(config.routers) == {"a", "fixed"} and "does not exist" in problems[0].message
    await replace_atomically(path, toml_doc("back"))
    await w.next(routers_are("back"))


@pytest.mark.anyio
async def test_missing_file_then_created(tmp_path: Path, watching: Callable[..., Watch]) -> None:
    path = tmp_path / "later.yaml"
    w = watching(watch_file, path, interval=0.02)
    config, problems = await w.next()
    assert config == DynamicConfig() and "does not exist" in problems[0].message
    doc = {
        "http": {
            "routers": {"y": {"rule": "Host(`y`)", "service": "s"}},
            "services": {"s": {"loadBalancer": {"servers": [{"url": "http://a:1"}]}}},
        }
    }
    await replace_atomically(path, json.dumps(doc))  # JSON is valid YAML
    await w.next(routers_are("y"))


@pytest.mark.anyio
async def test_content_problems_are_reported_with_the_config(
    tmp_path: Path, watching: Callable[..., Watch]
) -> None:
    path = tmp_path / "dynamic.yml"
    await write(
        path,
        "http:\n  routers:\n    ok: {rule: 'Host(`a`)', service: s}\n"
        "    bad: {service: s}\n  services:\n"
        "    s: {loadBalancer: {servers: [{url: 'http://a:1'}]}}\n",
    )
    w = watching(watch_file, path, interval=0.02)
    config, problems = await w.next()
    assert set(config.routers) == {"ok"}
    assert [p.where for p in problems] == ["http.routers.bad.rule"]


def test_load_config_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigSourceError, match="cannot read"):
        load_config_file(tmp_path / "nope.toml")
    (tmp_path / "x.ini").write_text("")
    with pytest.raises(ConfigSourceError, match=r"unknown configuration file type '\.ini'"):
        load_config_file(tmp_path / "x.ini")
    (tmp_path / "list.yaml").write_text("- a\n")
    with pytest.raises(ConfigSourceError, match="not a table"):
        load_config_file(tmp_path / "list.yaml")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigSourceError, match=r"bad\.json: not valid JSON"):
        load_config_file(tmp_path / "bad.json")


# -- etcd --------------------------------------------------------------------------------------
# Under trio, httpx/httpcore response and request-body async generators that are abandoned
# mid-stream (etcd killed while sending, or a watch stream we leave on purpose to resync) are
# finalised by the garbage collector, and trio warns about it. The connection itself is closed
# by httpx (``async with client.stream``); nothing of ours leaks.
pytestmark = [
    pytest.mark.filterwarnings(
        r"ignore:Async generator 'httpx\.[\w.]+' was garbage collected:ResourceWarning"
    ),
    pytest.mark.filterwarnings(
        r"ignore:Async generator 'httpcore\.[\w.]+' was garbage collected:ResourceWarning"
    ),
]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    with running_etcd(tmp_path_factory.mktemp("etcd")) as e:
        yield e


def kv_router(prefix: str, name: str, port: int = 1) -> dict[str, str]:
    return {
        f"{prefix}/http/routers/{name}/rule": f"PathPrefix(`/{name}/`)",
        f"{prefix}/http/routers/{name}/service": f"s-{name}",
        f"{prefix}/http/services/s-{name}/loadBalancer/servers/0/url": f"http://127.0.0.1:{port}",
    }


@pytest.mark.services
@pytest.mark.anyio
async def test_etcd_puts_and_deletes_are_watched(
    etcd: Etcd, watching: Callable[..., Watch], anyio_backend: object
) -> None:
    prefix = f"t1-{anyio_backend[0]}"  # type: ignore[index]
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "a"))
    await anyio.to_thread.run_sync(etcd.put, f"{prefix}x/http/routers/z/rule", "Host(`z`)")
    w = watching(watch_etcd, etcd.url, prefix)
    await w.next(routers_are("a"))
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "b"))
    config, _ = await w.next(routers_are("a", "b"))
    assert config.services["s-b"].servers[0].url == "http://127.0.0.1:1"
    await anyio.to_thread.run_sync(
        etcd.put, f"{prefix}/http/services/s-b/loadBalancer/servers/0/url", "http://127.0.0.1:2"
    )
    config, _ = await w.next(
        lambda s: "s-b" in s[0].services and s[0].services["s-b"].servers[0].url.endswith(":2")
    )
    await anyio.to_thread.run_sync(lambda: etcd.delete(f"{prefix}/http/routers/a/", prefix=True))
    await w.next(routers_are("b"))


@pytest.mark.services
@pytest.mark.anyio
async def test_etcd_stopped_and_restarted_mid_watch(
    etcd: Etcd, watching: Callable[..., Watch], anyio_backend: object
) -> None:
    prefix = f"t2-{anyio_backend[0]}"  # type: ignore[index]
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "a"))
    w = watching(watch_etcd, etcd.url, prefix, max_backoff=0.2)
    await w.next(routers_are("a"))
    await anyio.to_thread.run_sync(etcd.stop)
    config, problems = await w.next(lambda s: bool(s[1]))
    assert set(config.routers) == {"a"}  # keeps serving the last good config
    assert "etcd unreachable" in problems[0].message and "retrying" in problems[0].message
    await anyio.to_thread.run_sync(etcd.start)
    # changed right after the restart, quite possibly before the watch is back: not missed
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "after"))
    await w.next(routers_are("a", "after"))
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "later"))
    await w.next(routers_are("a", "after", "later"))


@pytest.mark.services
@pytest.mark.anyio
async def test_etcd_watch_resumes_after_compaction_by_reading_everything(
    etcd: Etcd, watching: Callable[..., Watch], anyio_backend: object
) -> None:
    prefix = f"t3-{anyio_backend[0]}"  # type: ignore[index]
    await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "a"))
    w = watching(watch_etcd, etcd.url, prefix, min_backoff=3.0, max_backoff=3.0)
    await w.next(routers_are("a"))
    await anyio.to_thread.run_sync(etcd.stop)
    await w.next(lambda s: bool(s[1]))
    await anyio.to_thread.run_sync(etcd.start)
    # while the watcher waits to retry: change, then compact the history it would resume from
    await anyio.to_thread.run_sync(lambda: etcd.delete(f"{prefix}/http/routers/a/", prefix=True))
    revision = await anyio.to_thread.run_sync(etcd.put_many, kv_router(prefix, "b"))
    await anyio.to_thread.run_sync(etcd.call, "/v3/kv/compaction", {"revision": revision})
    await w.next(routers_are("b"))


@pytest.mark.services
@pytest.mark.anyio
async def test_etcd_unreachable_from_the_start(watching: Callable[..., Watch]) -> None:
    from support import free_port

    w = watching(watch_etcd, f"http://127.0.0.1:{free_port()}", "traefik", max_backoff=0.05)
    config, problems = await w.next()
    assert config == DynamicConfig() and "ConnectError" in problems[0].message
