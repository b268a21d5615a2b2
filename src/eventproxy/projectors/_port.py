"""The projector port: what every projection of the route log implements.

A projector keeps one projection (the in-process data plane's routing table, a traefik
file-provider file, traefik's KV layout in etcd) equal to the fold of the log:

* ``seq`` -- the seq this projector last applied (in memory);
* ``applied_seq()`` -- the seq the projection itself records (read from its store: after a
  crash or with several projectors this is the truth, ``seq`` is only this process's view);
* ``apply(records)`` -- project the next records of the log, as few writes as possible;
* ``reset(table)`` -- make the projection exactly ``table`` (start-up, repair, re-projection).

``apply`` raises :class:`ProjectionError` when the store cannot be written; the projection is
then either unchanged or at a consistent earlier seq, and ``reset`` repairs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from .._errors import EventProxyError
from ..events import Record
from ..table import RouteTable

__all__ = ["ProjectionError", "Projector"]


class ProjectionError(EventProxyError):
    """A projection's store could not be read or written."""


@runtime_checkable
class Projector(Protocol):
    @property
    def seq(self) -> int: ...

    async def applied_seq(self) -> int: ...

    async def apply(self, records: Sequence[Record]) -> None: ...

    async def reset(self, table: RouteTable) -> None: ...
