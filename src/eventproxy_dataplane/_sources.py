"""Configuration sources: a watched file-provider file, and traefik's KV layout in etcd.

Theory of operation. Each source runs until cancelled and calls ``on_config(config, problems)``
with a whole snapshot every time the configuration changes; the caller swaps its routing table
atomically. When the source cannot be read (file missing or unparsable, etcd unreachable) the
callback gets the *last good* configuration again (an empty one if there never was one) with a
problem that says what is wrong, and the source keeps trying -- the node never drops its routes
because its source hiccupped. Nothing here blocks the event loop: file system calls run in a
worker thread (``anyio.to_thread``), etcd is reached with httpx's async client.

* ``watch_file`` polls ``(device, inode, size, mtime, ctime)`` every ``interval`` seconds, so an
  in-place rewrite and an atomic rename over the file are both seen. TOML (``.toml``), YAML
  (``.yaml``/``.yml``) and JSON (``.json``) are understood.
* ``watch_etcd`` reads the prefix with ``POST /v3/kv/range`` (etcd's v3 JSON gateway), then
  streams ``POST /v3/watch`` from the next revision. After a disconnect it resumes the watch
  from the last revision it applied, so no change is missed; if that revision was compacted
  away it reads the whole prefix again. Retries back off exponentially up to ``max_backoff``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import tomllib
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn, cast

import anyio
import anyio.to_thread
import httpx
import yaml

from ._config import ConfigProblem, DynamicConfig, config_from_kv, parse_dynamic_config
from ._errors import ConfigSourceError

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
def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _range_end(prefix: bytes) -> bytes:
    raw = bytearray(prefix)
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


class _Resync(Exception):
    """The watch cannot resume (compacted, or cancelled by the server): read everything."""


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


def _kv_text(kv: Mapping[str, Any], field: str) -> str:
    return base64.b64decode(kv.get(field, "")).decode("utf-8", "replace")


async def _read_all(client: httpx.AsyncClient, url: str, state: _EtcdState) -> None:
    body = {"key": _b64(state.key_prefix), "range_end": _b64(_range_end(state.key_prefix))}
    resp = await client.post(f"{url}/v3/kv/range", json=body)
    resp.raise_for_status()
    out = resp.json()
    state.pairs = {_kv_text(kv, "key"): _kv_text(kv, "value") for kv in out.get("kvs", [])}
    state.revision = int(out["header"]["revision"])


async def _follow(
    client: httpx.AsyncClient,
    url: str,
    state: _EtcdState,
    on_config: ConfigCallback,
    connected: Callable[[], None],
) -> None:
    body = {
        "create_request": {
            "key": _b64(state.key_prefix),
            "range_end": _b64(_range_end(state.key_prefix)),
            "start_revision": state.revision + 1,
        }
    }
    timeout = httpx.Timeout(5.0, read=None)
    async with client.stream("POST", f"{url}/v3/watch", json=body, timeout=timeout) as resp:
        resp.raise_for_status()
        lines_gen = cast(AsyncGenerator[str, None], resp.aiter_lines())  # it is one
        async with contextlib.aclosing(lines_gen) as lines:
            async for line in lines:
                if not line.strip():
                    continue
                message = json.loads(line)
                if "error" in message:
                    raise ConfigSourceError(f"watch failed: {message['error']}")
                result = message.get("result", {})
                if result.get("canceled") or int(result.get("compact_revision", 0) or 0):
                    raise _Resync(result.get("cancel_reason") or "watch cancelled or compacted")
                if result.get("created"):
                    connected()
                events = result.get("events") or []
                if not events:
                    continue
                for event in events:
                    kv = event.get("kv", {})
                    key = _kv_text(kv, "key")
                    if event.get("type") == "DELETE":
                        state.pairs.pop(key, None)
                    else:
                        state.pairs[key] = _kv_text(kv, "value")
                    state.revision = max(state.revision, int(kv.get("mod_revision", 0)))
                on_config(*state.snapshot())


async def watch_etcd(
    url: str,
    prefix: str,
    on_config: ConfigCallback,
    *,
    client: httpx.AsyncClient | None = None,
    min_backoff: float = 0.05,
    max_backoff: float = 5.0,
) -> NoReturn:
    """Deliver the configuration under ``prefix`` (traefik's rootKey) and every change to it.

    ``url`` is one etcd client URL (``http://127.0.0.1:2379``); a ``client`` may be given for
    TLS or authentication headers. Runs until cancelled; never raises on etcd failures.
    """
    url = url.rstrip("/")
    state = _EtcdState(prefix)
    own = client is None
    http = client or httpx.AsyncClient(timeout=httpx.Timeout(5.0))
    delay = min_backoff
    need_full = True

    def connected() -> None:
        nonlocal delay
        delay = min_backoff

    try:
        while True:
            try:
                if need_full:
                    await _read_all(http, url, state)
                    need_full = False
                    connected()
                    on_config(*state.snapshot())
                await _follow(http, url, state, on_config, connected)
                continue  # the server ended the stream cleanly: resume from our revision
            except _Resync:
                need_full = True
                continue
            except (httpx.HTTPError, OSError, ValueError, KeyError, ConfigSourceError) as exc:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                on_config(
                    state.last_good,
                    [
                        ConfigProblem(
                            f"etcd {url} {state.root}/",
                            f"etcd unreachable or failing ({reason}); keeping the last good "
                            f"configuration (revision {state.revision}); retrying in {delay:.2f}s",
                        )
                    ],
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, max_backoff)
    finally:
        if own:
            with anyio.CancelScope(shield=True):
                await http.aclose()
