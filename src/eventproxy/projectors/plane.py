"""The in-process data plane behind the projector port (see :mod:`eventproxy.projection`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..events import Record
from ..projection import PlaneProjection
from ..table import RouteTable

__all__ = ["PlaneProjector"]


class PlaneProjector:
    """Adapts :class:`PlaneProjection` (synchronous, in memory) to the projector port."""

    def __init__(self, projection: PlaneProjection) -> None:
        self.projection = projection

    @property
    def seq(self) -> int:
        return self.projection.seq

    @property
    def table(self) -> RouteTable:
        return self.projection.table

    async def applied_seq(self) -> int:
        return self.projection.seq

    async def apply(self, records: Sequence[Record]) -> None:
        self.projection.apply(records)

    async def reset(self, table: RouteTable) -> None:
        self.projection.reset(table)
