"""The two etcd calls the KV projector needs (read a prefix, one compare-and-write
transaction), as a tiny interface, with an adapter over etcd's v3 JSON gateway.

The interface is all the projector knows of etcd, so the adapter can be swapped for the shared
etcd client module when it lands (ARCHITECTURE.md: one etcd client for both packages). Transport
failures are translated to :class:`ProjectionError` here; callers never see httpx's errors.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import httpx

from ._port import ProjectionError

__all__ = ["GatewayKV", "KVStore", "prefix_end"]


class KVStore(Protocol):
    async def get_prefix(self, prefix: str) -> dict[str, str]:
        """Every key under ``prefix`` and its value."""
        ...

    async def txn(
        self,
        compare_key: str,
        expect: str | None,
        puts: Mapping[str, str],
        delete_keys: Sequence[str] = (),
        delete_prefixes: Sequence[str] = (),
    ) -> tuple[bool, str | None]:
        """If ``compare_key`` holds ``expect`` (``None``: absent), write; return (written, the
        value ``compare_key`` holds when not written)."""
        ...

    async def aclose(self) -> None: ...


def _b64(text: str | bytes) -> str:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def _text(value: str) -> str:
    return base64.b64decode(value).decode("utf-8", "replace")


def prefix_end(prefix: str) -> bytes:
    """etcd's range end for "every key starting with ``prefix``"."""
    raw = bytearray(prefix.encode("utf-8"))
    while raw and raw[-1] == 0xFF:
        raw.pop()
    if not raw:
        return b"\0"
    raw[-1] += 1
    return bytes(raw)


class GatewayKV:
    """:class:`KVStore` over etcd's v3 JSON gateway (``/v3/kv/range``, ``/v3/kv/txn``)."""

    def __init__(self, url: str, *, client: httpx.AsyncClient | None = None) -> None:
        self.url = url.rstrip("/")
        self._own = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            resp = await self._client.post(self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise ProjectionError(f"etcd {self.url}: {type(exc).__name__}: {exc}") from None
        if resp.status_code != 200:
            raise ProjectionError(
                f"etcd {self.url}{path}: HTTP {resp.status_code}: {resp.text[:300]}"
            )
        out: dict[str, Any] = resp.json()
        return out

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        body = {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        out = await self._post("/v3/kv/range", body)
        return {_text(kv["key"]): _text(kv.get("value", "")) for kv in out.get("kvs", [])}

    async def txn(
        self,
        compare_key: str,
        expect: str | None,
        puts: Mapping[str, str],
        delete_keys: Sequence[str] = (),
        delete_prefixes: Sequence[str] = (),
    ) -> tuple[bool, str | None]:
        if expect is None:
            compare = {
                "key": _b64(compare_key),
                "target": "CREATE",
                "result": "EQUAL",
                "create_revision": "0",
            }
        else:
            compare = {
                "key": _b64(compare_key),
                "target": "VALUE",
                "result": "EQUAL",
                "value": _b64(expect),
            }
        success: list[dict[str, Any]] = [
            {"request_delete_range": {"key": _b64(p), "range_end": _b64(prefix_end(p))}}
            for p in delete_prefixes
        ]
        success += [{"request_delete_range": {"key": _b64(k)}} for k in delete_keys]
        success += [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts.items()]
        failure = [{"request_range": {"key": _b64(compare_key)}}]
        out = await self._post(
            "/v3/kv/txn", {"compare": [compare], "success": success, "failure": failure}
        )
        if out.get("succeeded"):
            return True, None
        for response in out.get("responses", []):
            kvs = response.get("response_range", {}).get("kvs", [])
            if kvs:
                return False, _text(kvs[0].get("value", ""))
        return False, None

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()
