"""Planning the KV projector's etcd transactions. Pure: tables and records in, plans out.

Theory of operation
-------------------
Every transaction the KV projector sends compares the applied-seq marker (the ``rule`` key of
the marker router, see :mod:`.traefik_config`) with the value it expects, and on success moves
the marker forward together with the keys that describe that seq. So:

* exactly once: a transaction applies on top of the state it was planned against, or not at all;
* resumable: after a crash the marker names the seq the keys describe;
* several projector replicas: the first to move the marker wins, the others' compares fail and
  they find the marker at (or past) their own seq and do nothing.

:func:`plan_apply` turns a batch of records into as few transactions as the limits allow (etcd
refuses requests over ``--max-request-bytes``, 1.5 MiB by default, and transactions with more
than ``--max-txn-ops`` operations, 128 by default). It cuts only at record boundaries, so every
transaction leaves the keys consistent with the seq its marker names. A removed route's keys
are range-deleted (router and service prefix) in the same transaction.

:func:`plan_sync` compares what etcd holds with the projection of a table and plans the
difference (re-projection: start-up, repair, a lost prefix). If the difference does not fit in
one transaction, every part but the last sets a *partial* marker, so no reader ever takes a
half-written re-projection for a consistent seq.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..events import Record, RouteAdded
from ..table import RouteEntry, RouteTable, fold_all
from .traefik_config import (
    kv_pairs,
    marker_key,
    marker_kv,
    marker_rule,
    partial_marker_rule,
    route_kv,
    route_prefixes,
)

__all__ = ["ETCD_MAX_REQUEST_BYTES", "ETCD_MAX_TXN_OPS", "Limits", "Txn", "plan_apply", "plan_sync"]

ETCD_MAX_REQUEST_BYTES = 1_572_864  # etcd's default --max-request-bytes (1.5 MiB)
ETCD_MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
_OP_OVERHEAD = 16  # protobuf framing per operation, generously


@dataclass(frozen=True, slots=True)
class Limits:
    max_ops: int = ETCD_MAX_TXN_OPS
    # room left for the compare, the failure branch and framing
    max_bytes: int = ETCD_MAX_REQUEST_BYTES - 64 * 1024

    def __post_init__(self) -> None:
        if self.max_ops < 10:
            raise ValueError(
                f"max_ops must be at least 10 (one route and the whole marker), not {self.max_ops}"
            )
        if self.max_bytes < 64 * 1024:
            raise ValueError(f"max_bytes must be at least 64 KiB, not {self.max_bytes}")


@dataclass(frozen=True, slots=True)
class Txn:
    """One etcd transaction: if the marker key holds ``expect`` (``None``: the key is absent),
    put ``puts``, delete ``delete_keys`` and every key under each of ``delete_prefixes``."""

    expect: str | None
    puts: dict[str, str]
    delete_keys: tuple[str, ...] = ()
    delete_prefixes: tuple[str, ...] = ()
    seq: int | None = None  # the seq the marker names afterwards (None: a partial write)
    marker: str = field(default="")  # the marker value afterwards

    @property
    def ops(self) -> int:
        return len(self.puts) + len(self.delete_keys) + len(self.delete_prefixes)


def _put_bytes(pairs: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) + _OP_OVERHEAD for k, v in pairs.items())


def _route_cost(entry: RouteEntry | None, routespec: str, root: str) -> tuple[int, int]:
    """(ops, bytes) an upsert or removal of one route costs at most."""
    prefixes = route_prefixes(routespec, root)
    delete_bytes = sum(2 * len(p.encode()) + _OP_OVERHEAD for p in prefixes)
    if entry is None:
        return len(prefixes), delete_bytes
    pairs = route_kv(entry, root)
    return max(len(pairs), len(prefixes)), max(_put_bytes(pairs), delete_bytes)


def plan_apply(
    before: RouteTable,
    records: Iterable[Record],
    root: str,
    expect: str | None,
    limits: Limits | None = None,
) -> tuple[list[Txn], RouteTable]:
    """The transactions that bring etcd from ``before`` (marker ``expect``) to the fold of
    ``records``, and that fold. Consecutive records share a transaction while it fits."""
    limits = limits or Limits()
    records = list(records)
    after = fold_all(before, records)
    if not records:
        return [], after
    txns: list[Txn] = []
    marker_ops = 4 if expect is None else 1  # the whole marker router on a first write
    state = dict(before)  # routespec -> entry, as of the last record looked at
    at_start = before  # the table at the start of the current chunk
    chunk: dict[str, RouteEntry | None] = {}
    chunk_ops = chunk_bytes = 0
    chunk_seq = before.seq

    def close() -> None:
        nonlocal expect, at_start, chunk, chunk_ops, chunk_bytes, marker_ops
        puts: dict[str, str] = {}
        prefixes: list[str] = []
        for spec, entry in chunk.items():
            if entry is not None:
                puts.update(route_kv(entry, root))
            elif spec in at_start:
                prefixes.extend(route_prefixes(spec, root))
        marker = marker_rule(chunk_seq)
        if expect is None:
            puts.update(marker_kv(root, marker))
        else:
            puts[marker_key(root)] = marker
        txns.append(Txn(expect, puts, (), tuple(prefixes), chunk_seq, marker))
        expect = marker
        marker_ops = 1
        at_start = RouteTable(state, chunk_seq)
        chunk = {}
        chunk_ops = chunk_bytes = 0

    costs: dict[str, tuple[int, int]] = {}  # the most a route in this chunk may cost
    for record in records:
        event = record.event
        spec = event.routespec
        entry = (
            RouteEntry.create(spec, event.target, event.data, record.seq)
            if isinstance(event, RouteAdded)
            else None
        )
        ops, size = _route_cost(entry, spec, root)
        old_ops, old_size = costs.get(spec, (0, 0))
        ops, size = max(ops, old_ops), max(size, old_size)
        if chunk and (
            chunk_ops + ops + marker_ops > limits.max_ops
            or chunk_bytes + size + 512 > limits.max_bytes
        ):
            close()
            costs = {}
            old_ops = old_size = 0
        chunk[spec] = entry
        costs[spec] = (ops, size)
        chunk_ops += ops - old_ops
        chunk_bytes += size - old_size
        if entry is None:
            state.pop(spec, None)
        else:
            state[spec] = entry
        chunk_seq = record.seq
    close()
    return txns, after


def plan_sync(
    actual: Mapping[str, str],
    table: RouteTable,
    root: str,
    limits: Limits | None = None,
) -> list[Txn]:
    """Transactions that make eventproxy's keys in etcd (``actual``) exactly the projection of
    ``table``: missing or edited keys put, stale keys deleted. Empty when already in sync."""
    limits = limits or Limits()
    desired = kv_pairs(table, root)
    mkey = marker_key(root)
    expect = actual.get(mkey)
    final_marker = desired.pop(mkey)
    puts = [(k, v) for k, v in desired.items() if actual.get(k) != v]
    deletes = [k for k in actual if k not in desired and k != mkey]
    if not puts and not deletes:
        if expect == final_marker:
            return []
        return [Txn(expect, {mkey: final_marker}, (), (), table.seq, final_marker)]
    ops_list: list[tuple[str, str | None]] = [*puts, *((k, None) for k in deletes)]
    chunks: list[list[tuple[str, str | None]]] = [[]]
    size = 0
    for key, value in ops_list:
        cost = len(key.encode()) + len((value or "").encode()) + _OP_OVERHEAD
        if chunks[-1] and (
            len(chunks[-1]) + 1 >= limits.max_ops or size + cost + 512 > limits.max_bytes
        ):
            chunks.append([])
            size = 0
        chunks[-1].append((key, value))
        size += cost
    txns: list[Txn] = []
    for i, part in enumerate(chunks):
        last = i == len(chunks) - 1
        marker = final_marker if last else partial_marker_rule(table.seq, i)
        part_puts = {k: v for k, v in part if v is not None}
        part_puts[mkey] = marker
        part_deletes = tuple(k for k, v in part if v is None)
        txns.append(Txn(expect, part_puts, part_deletes, (), table.seq if last else None, marker))
        expect = marker
    return txns
