"""The data-plane projection: keep a pure-Python data plane's routing table equal to the fold of
the route log.

:class:`PlaneProjection` holds the folded :class:`RouteTable` and the data plane it feeds. Each
:meth:`PlaneProjection.apply` folds new records and hands the data plane only the difference
(routers added, replaced or removed), as one synchronous step: a lookup sees the table before or
after a batch, never half of it, and requests in flight keep the backend they were routed to.
The applied ``seq`` only moves forward, one record at a time, so a record is applied exactly once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from eventproxy_dataplane import DataPlane, DataPlaneError, RouterSpec, ServerSpec, ServiceSpec

from ._gc import paused_gc
from .events import Record
from .routespec import parse_routespec
from .table import RouteEntry, RouteTable, fold_all
from .traefik import name_for, priority_for, rule_for

__all__ = ["PlaneProjection", "plane_entry"]

logger = logging.getLogger("eventproxy.projection")


def plane_entry(entry: RouteEntry) -> tuple[RouterSpec, ServiceSpec]:
    """The data plane's router and service for one route (same names and rules as traefik's)."""
    spec = parse_routespec(entry.routespec)
    name = name_for(entry.routespec)
    router = RouterSpec(name=name, rule=rule_for(spec), service=name, priority=priority_for(spec))
    service = ServiceSpec(name=name, servers=(ServerSpec(url=entry.target),))
    return router, service


class PlaneProjection:
    """A routing table folded from the log, mirrored into a data plane."""

    def __init__(
        self,
        plane: DataPlane | None,
        table: RouteTable | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
    ) -> None:
        self.plane = plane
        self.table = table if table is not None else RouteTable()
        self._log = log
        if plane is not None and len(self.table):
            self._push(self._entries(self.table.values()), [])

    @property
    def seq(self) -> int:
        return self.table.seq

    def attach(self, plane: DataPlane) -> None:
        """Start feeding ``plane``: it receives every current route at once."""
        self.plane = plane
        self._push(self._entries(self.table.values()), [])

    def _entries(self, entries: Iterable[RouteEntry]) -> list[tuple[RouterSpec, ServiceSpec]]:
        """Plane entries for ``entries``; a route the plane cannot take is logged and skipped,
        never allowed to stop the projection (the log stays the source of truth)."""
        out = []
        for entry in entries:
            try:
                out.append(plane_entry(entry))
            except (DataPlaneError, ValueError) as exc:
                self._log.error(
                    "data plane cannot route %s -> %s: %s", entry.routespec, entry.target, exc
                )
        return out

    def reset(self, table: RouteTable) -> None:
        """Replace the table wholesale (e.g. after loading a snapshot); the plane gets the diff."""
        before, self.table = self.table, table
        if self.plane is None:
            return
        upserts = self._entries(e for spec, e in table.items() if before.get(spec) != e)
        removals = [name_for(spec) for spec in before if spec not in table]
        self._push(upserts, removals)

    def apply(self, records: Sequence[Record] | Iterable[Record]) -> None:
        """Fold ``records`` (the next ones in the log) and apply the difference."""
        records = list(records)
        if not records:
            return
        before = self.table
        with paused_gc():
            after = fold_all(before, records)
        self.table = after
        if self.plane is None:
            return
        changed = []
        removals = []
        for spec in {r.event.routespec for r in records}:
            entry = after.get(spec)
            if entry is None:
                if spec in before:
                    removals.append(name_for(spec))
            elif before.get(spec) != entry:
                changed.append(entry)
        self._push(self._entries(changed), removals)

    def _push(self, upserts: list[tuple[RouterSpec, ServiceSpec]], removals: list[str]) -> None:
        assert self.plane is not None
        for problem in self.plane.apply(upserts, removals):
            self._log.error("data plane refused a route: %s: %s", problem.where, problem.message)
