"""``memory://`` and ``memory://NAME``: the in-memory route log, for tests and embedding.

``memory://`` is private to its instance. ``memory://NAME`` keeps its records in this process
under NAME, so a log closed and opened again (a proxy "restart" inside one test) finds them, and
several live instances share them (a watcher on one sees appends made through another, within
one event loop). Nothing survives the process.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from .._errors import AppendConflictError
from ..events import Record, encode_record
from ..snapshot import Snapshot
from ._base import LocalRouteLog, encode_or_refuse

__all__ = ["MemoryRouteLog", "forget_memory_logs"]


@dataclass
class _Store:
    snapshot: Snapshot | None = None
    records: list[Record] = field(default_factory=list)
    version: int = 0
    instances: weakref.WeakSet[MemoryRouteLog] = field(default_factory=weakref.WeakSet)

    def changed(self) -> None:
        self.version += 1
        for instance in list(self.instances):
            instance._notify()

    @property
    def head(self) -> int:
        if self.records:
            return self.records[-1].seq
        return self.snapshot.seq if self.snapshot is not None else 0


_NAMED: dict[str, _Store] = {}


def forget_memory_logs() -> None:
    """Drop every named in-memory log (test isolation)."""
    _NAMED.clear()


class MemoryRouteLog(LocalRouteLog):
    def __init__(self, name: str = "") -> None:
        super().__init__(f"memory://{name}")
        self._store = _NAMED.setdefault(name, _Store()) if name else _Store()
        self._store.instances.add(self)
        self._version = -1

    async def _refresh(self) -> None:
        store = self._store
        if store.version != self._version:
            self._install(store.snapshot, list(store.records))
            self._version = store.version

    async def _persist_batch(self, records: list[Record]) -> None:
        # refuse what a durable backend could not store, so memory:// tests see the same errors
        encode_or_refuse(lambda: [encode_record(r) for r in records], records)
        store = self._store
        if store.head != records[0].seq - 1:
            raise AppendConflictError(f"{self.url}: another instance appended concurrently")
        store.records = [*store.records, *records]
        store.changed()
        self._version = store.version

    async def _persist_compaction(self, snapshot: Snapshot, records: list[Record]) -> None:
        store = self._store
        store.snapshot, store.records = snapshot, list(records)
        store.changed()
        self._version = store.version
