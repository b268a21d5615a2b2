"""The data-plane projection: keep a pure-Python data plane's routing table equal to the fold of
the route log.

:class:`PlaneProjection` holds the folded table (a :class:`FoldingTable`: each batch is folded
in place, in O(batch), never by copying the whole table) and the data plane it feeds. Each
:meth:`PlaneProjection.apply` folds new records and hands the data plane only the difference
(routers added, replaced or removed) through ``DataPlane.apply``, as one synchronous step: a
lookup sees the table before or after a batch, never half of it, and requests in flight keep
the backend they were routed to. The applied ``seq`` only moves forward, and a batch must start
right after it, so a record is applied exactly once.

A route the data plane refuses stays in the table (the log is the source of truth) and is not
served; :meth:`PlaneProjection.apply` returns it with the reason (``refused``), so that the
caller who added it is told, and keeps it in :attr:`PlaneProjection.unserved`, so that adding the
same route again tries the data plane again. An older version of a refused route is removed from
the plane: it never keeps sending traffic to the server the log no longer names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from eventproxy_dataplane import DataPlane, DataPlaneError, RouterSpec, ServerSpec, ServiceSpec

from ._gc import paused_gc
from .events import Record
from .routespec import parse_routespec
from .table import FoldingTable, RouteEntry, RouteTable
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
        self._folded = FoldingTable(table)
        self._log = log
        self.unserved: dict[str, str] = {}  # routespec -> why the data plane refused it
        # routespec -> its router (frozen; depends on the routespec only): a route re-added to
        # a new server reuses it instead of parsing and formatting again. Bounded: cleared when
        # it outgrows the table (routes removed for good).
        self._routers: dict[str, RouterSpec] = {}
        if plane is not None and len(self.table):
            self._push(list(self.table.values()), [])

    @property
    def table(self) -> RouteTable:
        """The folded table, live (read-only; it changes as batches are applied)."""
        return self._folded.view

    @property
    def seq(self) -> int:
        return self._folded.seq

    def attach(self, plane: DataPlane) -> dict[str, str]:
        """Start feeding ``plane``: it receives every current route at once. Returns the routes
        it refused (routespec -> reason)."""
        self.plane = plane
        return self._push(list(self.table.values()), [])

    def reset(self, table: RouteTable) -> dict[str, str]:
        """Replace the table wholesale (e.g. after loading a snapshot); the plane gets the diff.
        Returns the routes the plane refused (routespec -> reason)."""
        before = self.table
        self._folded = FoldingTable(table)
        if self.plane is None:
            return {}
        upserts = [e for spec, e in table.items() if before.get(spec) != e or spec in self.unserved]
        removals = [spec for spec in before if spec not in table]
        return self._push(upserts, removals)

    def apply(self, records: Sequence[Record] | Iterable[Record]) -> dict[str, str]:
        """Fold ``records`` (the next ones in the log) in place and apply the difference to the
        plane in one step. A batch that does not start right after ``seq`` changes nothing.
        Returns the routes of this batch the data plane refused (routespec -> reason); they are
        in the table all the same."""
        records = records if isinstance(records, list) else list(records)
        if not records:
            return {}
        with paused_gc():
            before = self._folded.apply(records)
        if self.plane is None:
            return {}
        after = self.table
        changed = []
        removals = []
        for spec, old in before.items():
            entry = after.get(spec)
            if entry is None:
                if old is not None:
                    removals.append(spec)
            elif old != entry or spec in self.unserved:
                changed.append(entry)
        return self._push(changed, removals)

    def _push(self, changed: list[RouteEntry], removed: list[str]) -> dict[str, str]:
        """Hand the plane the routes ``changed`` and remove the routespecs ``removed``, as one
        step; returns (and logs) the routes it refused, and keeps them in ``unserved``."""
        assert self.plane is not None
        refused: dict[str, str] = {}
        upserts: list[tuple[RouterSpec, ServiceSpec]] = []
        removals = [name_for(spec) for spec in removed]
        specs: dict[str, str] = {}  # router name -> routespec
        routers = self._routers
        for entry in changed:
            try:
                router = routers.get(entry.routespec)
                if router is None:
                    router, service = plane_entry(entry)
                    if len(routers) > 2 * len(self.table) + 4096:
                        routers.clear()
                    routers[entry.routespec] = router
                else:
                    service = ServiceSpec(name=router.name, servers=(ServerSpec(url=entry.target),))
            except (DataPlaneError, ValueError) as exc:
                refused[entry.routespec] = str(exc)
                removals.append(name_for(entry.routespec))  # never serve an older version
                continue
            upserts.append((router, service))
            specs[router.name] = entry.routespec
        problems = self.plane.apply(upserts, removals)
        for problem in problems:
            name = problem.where.removeprefix("http.routers.").rsplit(".", 1)[0]
            refused[specs.get(name, name)] = problem.message
        for spec in removed:
            self.unserved.pop(spec, None)
        for spec in specs.values():
            if spec not in refused:
                self.unserved.pop(spec, None)
        for spec, reason in refused.items():
            self.unserved[spec] = reason
            entry_ = self.table.get(spec)
            target = entry_.target if entry_ is not None else "?"
            self._log.error("data plane refused the route %s -> %s: %s", spec, target, reason)
        return refused
