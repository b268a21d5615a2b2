"""Configuration sources: a watched file-provider file, and traefik's KV layout in etcd.

Theory of operation. Each source runs until cancelled and calls ``on_config(config, problems)``
with a whole snapshot every time the configuration changes; the caller swaps its routing table
atomically. When the source cannot be read (file missing or unparsable, etcd unreachable) the
callback gets the *last good* configuration again (an empty one if there never was one) with a
problem that says what is wrong, and the source keeps trying -- the node never drops its routes
because its source hiccupped. Nothing here blocks the event loop: file system calls run in a
worker thread (``anyio.to_thread``), etcd is reached with the shared async client in ``etcd.py``.

* ``watch_file`` polls ``(device, inode, size, mtime, ctime)`` every ``interval`` seconds, so an
  in-place rewrite and an atomic rename over the file are both seen. TOML (``.toml``), YAML
  (``.yaml``/``.yml``) and JSON (``.json``) are understood.
* ``watch_etcd`` reads the prefix with :class:`~eventproxy_dataplane.etcd.EtcdClient` (etcd's
  v3 JSON gateway), then watches it from the next revision. After a disconnect it resumes the watch
  from the last revision it applied, so no change is missed; if that revision was compacted
  away it reads the whole prefix again. Retries back off exponentially up to ``max_backoff``.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import anyio
import anyio.to_thread
import yaml

from ._config import ConfigProblem, DynamicConfig, config_from_kv, parse_dynamic_config
from ._errors import ConfigSourceError
from .etcd import EtcdClient, EtcdCompactedError, EtcdError, prefix_end

__all__ = ["ConfigCallback", "load_config_file", "watch_etcd", "watch_file"]

ConfigCallback = Callable[[DynamicConfig, list[ConfigProblem]], None]

_Signature = tuple[int, int, int, int, int]


def _decode_document(path: Path, data: bytes) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return tomllib.loads(data.decode("utf-8"))
    if suffix in (".yaml", ".yml"):
        return yaml.safe_load(data) or {}
    if suffix == ".json":
        return json.loads(data)
    raise ConfigSourceError(
        f"{path}: unknown configuration file type {suffix!r} (expected .toml, .yaml, .yml or .json)"
    )


def load_config_file(path: str | os.PathLike[str]) -> tuple[DynamicConfig, list[ConfigProblem]]:
    """Read and parse one file-provider file (blocking; call it from a thread in async code).

    Raises :class:`ConfigSourceError` if the file cannot be read or is not valid TOML/YAML/JSON.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigSourceError(f"{p}: cannot read: {exc.strerror or exc}") from None
    return _parse_bytes(p, data)


def _parse_bytes(p: Path, data: bytes) -> tuple[DynamicConfig, list[ConfigProblem]]:
    try:
        doc = _decode_document(p, data)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigSourceError(f"{p}: not valid {p.suffix.lstrip('.').upper()}: {exc}") from None
    if not isinstance(doc, Mapping):
        raise ConfigSourceError(f"{p}: the document is not a table/mapping")
    return parse_dynamic_config(doc)


def _signature(p: Path) -> _Signature | None:
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _read(p: Path) -> tuple[_Signature | None, bytes | None, str | None]:
    """Stat and read in one worker-thread call: (signature, bytes, error)."""
    sig = _signature(p)
    if sig is None:
        return None, None, "file does not exist"
    try:
        return sig, p.read_bytes(), None
    except OSError as exc:
        return sig, None, f"cannot read: {exc.strerror or exc}"


async def watch_file(
    path: str | os.PathLike[str], on_config: ConfigCallback, *, interval: float = 0.25
) -> NoReturn:
    """Deliver the file's configuration now and after every change; runs until cancelled."""
    p = Path(path)
    last_sig: _Signature | bool | None = False  # False: nothing seen yet
    last_data: bytes | None = None
    last_good = DynamicConfig()
    failing = False
    while True:
        sig = await anyio.to_thread.run_sync(_signature, p)
        if sig != last_sig:
            sig, data, error = await anyio.to_thread.run_sync(_read, p)
            last_sig = sig
            result: tuple[DynamicConfig, list[ConfigProblem]] | None = None
            if error is None and data is not None:
                if data == last_data and not failing:
                    await anyio.sleep(interval)
                    continue
                try:
                    result = _parse_bytes(p, data)
                except ConfigSourceError as exc:
                    error = str(exc).removeprefix(f"{p}: ")
            if result is not None:
                last_data, last_good, failing = data, result[0], False
                on_config(*result)
            else:
                failing = True
                last_data = None
                on_config(
                    last_good,
                    [ConfigProblem(str(p), f"{error}; keeping the last good configuration")],
                )
        await anyio.sleep(interval)


# -- etcd ---------------------------------------------------------------------------------------


class _EtcdState:
    def __init__(self, prefix: str) -> None:
        self.root = prefix.strip("/")
        self.key_prefix = (self.root + "/").encode()
        self.pairs: dict[str, str] = {}
        self.revision = 0
        self.last_good = DynamicConfig()

    def snapshot(self) -> tuple[DynamicConfig, list[ConfigProblem]]:
        config, problems = config_from_kv(self.pairs, self.root)
        self.last_good = config
        return config, problems


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


async def _read_all(client: EtcdClient, state: _EtcdState) -> None:
    result = await client.range_prefix(state.key_prefix)
    state.pairs = {_text(kv.key): _text(kv.value) for kv in result.kvs}
    state.revision = result.revision


async def _follow(
    client: EtcdClient,
    state: _EtcdState,
    on_config: ConfigCallback,
    connected: Callable[[], None],
) -> None:
    watch = client.watch(
        state.key_prefix, prefix_end(state.key_prefix), start_revision=state.revision + 1
    )
    async with watch as stream:
        connected()
        async for batch in stream:
            if not batch.events:
                continue
            for event in batch.events:
                key = _text(event.kv.key)
                if event.type == "DELETE":
                    state.pairs.pop(key, None)
                else:
                    state.pairs[key] = _text(event.kv.value)
            state.revision = max(state.revision, batch.revision)
            on_config(*state.snapshot())


async def watch_etcd(
    url: str | Sequence[str],
    prefix: str,
    on_config: ConfigCallback,
    *,
    client: EtcdClient | None = None,
    min_backoff: float = 0.05,
    max_backoff: float = 5.0,
) -> NoReturn:
    """Deliver the configuration under ``prefix`` (traefik's rootKey) and every change to it.

    ``url`` is one or more etcd client URLs (``http://127.0.0.1:2379``, comma-separated); a
    ``client`` (:class:`~eventproxy_dataplane.etcd.EtcdClient`) may be given instead for TLS or
    authentication. Runs until cancelled; never raises on etcd failures.
    """
    own = client is None
    etcd = client or EtcdClient(url)
    state = _EtcdState(prefix)
    where = etcd.where
    delay = min_backoff
    need_full = True

    def connected() -> None:
        nonlocal delay
        delay = min_backoff

    try:
        while True:
            try:
                if need_full:
                    await _read_all(etcd, state)
                    need_full = False
                    connected()
                    on_config(*state.snapshot())
                await _follow(etcd, state, on_config, connected)
            except EtcdCompactedError:
                need_full = True  # the revision we needed is gone: read everything again
                continue
            except EtcdError as exc:
                on_config(
                    state.last_good,
                    [
                        ConfigProblem(
                            f"etcd {where} {state.root}/",
                            f"etcd unreachable or failing ({exc}); keeping the last good "
                            f"configuration (revision {state.revision}); retrying in {delay:.2f}s",
                        )
                    ],
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, max_backoff)
    finally:
        if own:
            await etcd.aclose()
