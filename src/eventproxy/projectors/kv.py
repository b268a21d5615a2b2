"""The traefik KV projector: the fold of the log in traefik's etcd layout, under a root key.

See :mod:`.kv_plan` for the transactions (exactly once, resumable, safe with several replicas)
and :mod:`.traefik_config` for the keys. This module is the thin I/O edge: it sends the planned
transactions through a :class:`~._kvstore.KVStore` and handles a lost compare.

* ``reset(table)`` reads eventproxy's keys under the root and writes only the difference (so it
  also repairs keys edited or deleted by hand, or a whole lost prefix). If another projector's
  marker is already past ``table.seq`` it writes nothing: a projection never goes backwards.
* ``apply(records)``: if a compare fails, the marker names who won. At or past our seq: nothing
  to do. Behind it (or no marker: the prefix was wiped): re-project with ``reset``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ..events import Record
from ..table import RouteTable
from ._kvstore import KVStore
from ._port import ProjectionError
from .kv_plan import Limits, Txn, plan_apply, plan_sync
from .traefik_config import marker_key, our_pairs, seq_from_marker_rule

__all__ = ["TraefikKVProjector"]

logger = logging.getLogger("eventproxy.projectors.kv")
_MAX_SYNC_ATTEMPTS = 20


class TraefikKVProjector:
    def __init__(
        self,
        kv: KVStore,
        root: str = "traefik",
        *,
        limits: Limits | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
    ) -> None:
        root = root.strip("/")
        if not root:
            raise ValueError("the traefik KV root key must not be empty")
        self.kv = kv
        self.root = root
        self.limits = limits or Limits()
        self.table = RouteTable()
        self._marker: str | None = None
        self._log = log
        self.txns_sent = 0  # transactions that changed etcd (for tests and benchmarks)

    @property
    def seq(self) -> int:
        return self.table.seq

    async def read(self) -> dict[str, str]:
        """eventproxy's keys under the root, as etcd holds them now."""
        return our_pairs(await self.kv.get_prefix(self.root + "/http/"), self.root)

    async def applied_seq(self) -> int:
        pairs = await self.kv.get_prefix(marker_key(self.root))
        return seq_from_marker_rule(pairs.get(marker_key(self.root))) or 0

    async def _send(self, txn: Txn) -> tuple[bool, str | None]:
        ok, current = await self.kv.txn(
            marker_key(self.root), txn.expect, txn.puts, txn.delete_keys, txn.delete_prefixes
        )
        if ok:
            self.txns_sent += 1
            self._marker = txn.marker
        return ok, current

    async def reset(self, table: RouteTable) -> None:
        table = RouteTable(table, table.seq)  # our own copy: a caller's table may be live
        for _ in range(_MAX_SYNC_ATTEMPTS):
            actual = await self.read()
            current = actual.get(marker_key(self.root))
            theirs = seq_from_marker_rule(current)
            if theirs is not None and theirs > table.seq:
                self._log.info(
                    "traefik KV %s/ is at seq %d, past ours (%d): not rewriting it",
                    self.root,
                    theirs,
                    table.seq,
                )
                self._marker, self.table = current, table
                return
            self._marker = current
            for txn in plan_sync(actual, table, self.root, self.limits):
                ok, _ = await self._send(txn)
                if not ok:
                    break  # someone else wrote meanwhile: look again
            else:
                self.table = table
                return
        raise ProjectionError(
            f"traefik KV {self.root}/: could not re-project seq {table.seq} after "
            f"{_MAX_SYNC_ATTEMPTS} attempts (other writers keep changing it)"
        )

    async def apply(self, records: Sequence[Record]) -> None:
        if not records:
            return
        txns, after = plan_apply(self.table, records, self.root, self._marker, self.limits)
        for txn in txns:
            ok, current = await self._send(txn)
            if ok:
                continue
            theirs = seq_from_marker_rule(current)
            if theirs is not None and theirs >= after.seq:
                self._marker = current  # another projector got there first
                break
            self._log.info(
                "traefik KV %s/: marker is %r, expected %r; re-projecting seq %d",
                self.root,
                current,
                txn.expect,
                after.seq,
            )
            await self.reset(after)
            break
        self.table = after
