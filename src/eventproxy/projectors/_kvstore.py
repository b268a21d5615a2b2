"""The two etcd calls the KV projector needs (read a prefix, one compare-and-write
transaction), as a tiny interface, with an adapter over etcd's v3 JSON gateway.

The interface is all the projector knows of etcd; the adapter sits on the shared etcd client
(``eventproxy_dataplane.etcd``: one etcd client for both packages). Its errors (which name the
endpoint and what failed) are translated to :class:`ProjectionError` here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from eventproxy_dataplane.etcd import (
    EtcdClient,
    EtcdError,
    compare_version,
    delete_op,
    put_op,
    range_op,
)
from eventproxy_dataplane.etcd import prefix_end as etcd_prefix_end

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


def prefix_end(prefix: str) -> bytes:
    """etcd's range end for "every key starting with ``prefix``"."""
    return etcd_prefix_end(prefix.encode("utf-8"))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class GatewayKV:
    """:class:`KVStore` over the shared etcd client (:mod:`eventproxy_dataplane.etcd`).

    ``url`` is one or more etcd endpoints (``http://h1:2379,http://h2:2379``); a ``client`` may
    be given instead, for credentials and TLS.
    """

    def __init__(self, url: str = "", *, client: EtcdClient | None = None) -> None:
        self._own = client is None
        self._client = client or EtcdClient(url)
        self.url = self._client.where

    async def get_prefix(self, prefix: str) -> dict[str, str]:
        try:
            result = await self._client.range_prefix(prefix.encode("utf-8"))
        except EtcdError as exc:
            raise ProjectionError(str(exc)) from None
        return {_text(kv.key): _text(kv.value) for kv in result.kvs}

    async def txn(
        self,
        compare_key: str,
        expect: str | None,
        puts: Mapping[str, str],
        delete_keys: Sequence[str] = (),
        delete_prefixes: Sequence[str] = (),
    ) -> tuple[bool, str | None]:
        key = compare_key.encode("utf-8")
        compare: dict[str, Any]
        if expect is None:
            compare = compare_version(key, 0)
        else:
            compare = {
                "key": base64.b64encode(key).decode("ascii"),
                "target": "VALUE",
                "result": "EQUAL",
                "value": base64.b64encode(expect.encode("utf-8")).decode("ascii"),
            }
        success: list[dict[str, Any]] = [
            delete_op(p.encode("utf-8"), prefix_end(p)) for p in delete_prefixes
        ]
        success += [delete_op(k.encode("utf-8")) for k in delete_keys]
        success += [put_op(k.encode("utf-8"), v.encode("utf-8")) for k, v in puts.items()]
        try:
            result = await self._client.txn([compare], success, [range_op(key)])
        except EtcdError as exc:
            raise ProjectionError(str(exc)) from None
        if result.succeeded:
            return True, None
        kvs = result.range_kvs(0) if result.responses else []
        return False, (_text(kvs[0].value) if kvs else None)

    @property
    def client(self) -> EtcdClient:
        return self._client

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()
