"""Run a projector against a log: re-project at start, then apply new records in batches.

Records are read in batches (everything appended since the last batch, up to ``batch_limit``)
so a burst of appends costs a few projection writes, not one per record. If the log was
compacted past the projector's position, the projector is re-projected from the log's table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .._errors import CompactedError
from ..log import RouteLog
from ._port import Projector

__all__ = ["follow_log"]

logger = logging.getLogger("eventproxy.projectors")


async def follow_log(
    log: RouteLog,
    projector: Projector,
    *,
    batch_limit: int = 10_000,
    on_applied: Callable[[int], None] | None = None,
) -> None:
    """Keep ``projector`` equal to the fold of ``log``; runs until cancelled or the log closes."""
    table = await log.load_table()
    await projector.reset(table)
    if on_applied is not None:
        on_applied(projector.seq)
    while True:
        try:
            records = await log.read(projector.seq + 1, limit=batch_limit)
        except CompactedError:
            await projector.reset(await log.load_table())
            continue
        if records:
            await projector.apply(records)
            if on_applied is not None:
                on_applied(projector.seq)
            continue
        watch = log.watch(projector.seq + 1)
        try:
            await watch.__anext__()  # wait for the next record; it is read with the batch
        except StopAsyncIteration:
            return
        except CompactedError:
            await projector.reset(await log.load_table())
