"""Snapshots: the routing table at a log position, as written by compaction.

A snapshot at ``seq`` N holds the table folded from records 1..N. Replaying a snapshot plus the
records after it gives the same table as replaying every record from 1 (a property the tests
check). Encoding is msgpack, like records; decoding is just as strict.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgpack

from ._errors import CorruptLogError, UnsupportedSchemaError
from .events import SCHEMA_VERSION, RouteAdded, pack_map_streaming
from .table import RouteEntry, RouteTable

__all__ = [
    "Snapshot",
    "pack_snapshot",
    "snapshot_from_wire",
    "snapshot_to_wire",
]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The table as of ``table.seq``, taken at ``ts``."""

    ts: datetime
    table: RouteTable

    @property
    def seq(self) -> int:
        return self.table.seq


def snapshot_to_wire(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "type": "snapshot",
        "seq": snapshot.seq,
        "ts": msgpack.Timestamp.from_datetime(snapshot.ts),
        "routes": [[e.routespec, e.target, e.data, e.seq] for e in snapshot.table.values()],
    }


def pack_snapshot(snapshot: Snapshot) -> bytes:
    """``packb(snapshot_to_wire(snapshot))``, byte for byte, encoding one route at a time
    (see :func:`~eventproxy.events.pack_map_streaming`)."""
    table = snapshot.table
    return pack_map_streaming(
        (
            ("v", SCHEMA_VERSION),
            ("type", "snapshot"),
            ("seq", snapshot.seq),
            ("ts", msgpack.Timestamp.from_datetime(snapshot.ts)),
        ),
        "routes",
        ([e.routespec, e.target, e.data, e.seq] for e in table.values()),
        len(table),
    )


def snapshot_from_wire(wire: object, *, where: str = "snapshot") -> Snapshot:
    if not isinstance(wire, dict) or wire.get("type") != "snapshot":
        raise CorruptLogError(f"{where}: not a snapshot")
    if wire.get("v") != SCHEMA_VERSION:
        raise UnsupportedSchemaError(
            f"{where}: snapshot schema version {wire.get('v')!r} is not supported "
            f"(this eventproxy reads version {SCHEMA_VERSION})"
        )
    seq, ts, routes = wire.get("seq"), wire.get("ts"), wire.get("routes")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise CorruptLogError(f"{where}: bad seq {seq!r}")
    if not isinstance(ts, datetime) or not isinstance(routes, list):
        raise CorruptLogError(f"{where} (seq {seq}): bad ts or routes field")
    entries: dict[str, RouteEntry] = {}
    for i, item in enumerate(routes):
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[3], int)):
            raise CorruptLogError(f"{where} (seq {seq}): route #{i} is malformed")
        try:
            event = RouteAdded(item[0], item[1], item[2])
        except ValueError as exc:
            raise CorruptLogError(f"{where} (seq {seq}): route #{i}: {exc}", seq=seq) from exc
        entries[event.routespec] = RouteEntry.create(
            event.routespec, event.target, event.data, item[3]
        )
    return Snapshot(ts=ts, table=RouteTable(entries, seq))
