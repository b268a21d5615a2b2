"""A data-plane node that serves the route log directly: ``eventproxy dataplane --log-url``.

It opens the log read-only, folds it, and follows it with one ``watch``: a task pumps the
watched records into a bounded buffer, and the node takes whatever has arrived (up to
``CATCH_UP_BATCH`` records) as one batch, folded in place and applied to its routing table in
one step. A node that fell behind by m records catches up in O(m) with few plane changes, about
as fast as a replay; at the head, each record is applied as it arrives. Several
nodes may follow the same log (a file on one machine today; etcd later); none of them writes.
If the writer compacts past a node's position, the node reloads from the snapshot and applies
the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from eventproxy_dataplane import DataPlane, ProxySettings, RoutingTable
from eventproxy_dataplane.etcd import EtcdOptions

from ._errors import CompactedError
from .events import Record
from .log import RouteLog, open_log
from .projection import PlaneProjection

__all__ = ["follow", "follow_log", "serve_log"]

logger = logging.getLogger("eventproxy.serve")

CATCH_UP_BATCH = 10_000  # records applied as one batch at most while behind the head
_BEHIND = 1000  # a batch this big means the node is catching up: gather more for a moment
_GATHER = 0.01  # seconds to wait for more records while catching up


async def follow_log(
    log_url: str,
    projection: PlaneProjection,
    *,
    etcd: EtcdOptions | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``projection`` equal to the log's fold until cancelled; ``started(seq)`` once loaded."""
    async with await open_log(log_url, readonly=True, etcd=etcd) as log:
        projection.reset(await log.load_table())
        logger.info(
            "following %s from seq %d (%d routes)", log_url, projection.seq, len(projection.table)
        )
        task_status.started(projection.seq)
        while True:
            try:
                await follow(log, projection)
                return  # the log was closed
            except CompactedError:
                logger.warning(
                    "%s was compacted past seq %d; reloading from its snapshot",
                    log_url,
                    projection.seq,
                )
                projection.reset(await log.load_table())


async def follow(log: RouteLog, projection: PlaneProjection) -> None:
    """Apply ``log``'s records past ``projection.seq`` in batches until the log is closed.

    Raises :class:`CompactedError` when the log was compacted past the projection's position.
    """
    send, receive = anyio.create_memory_object_stream[Record](CATCH_UP_BATCH)
    failure: list[CompactedError] = []

    async def pump() -> None:
        async with send:
            try:
                async for record in log.watch(projection.seq + 1):
                    try:  # no checkpoint while records keep coming: they arrive as one batch
                        send.send_nowait(record)
                    except anyio.WouldBlock:
                        await send.send(record)
            except CompactedError as exc:
                failure.append(exc)

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(pump)
        async for record in receive:
            batch = [record]
            _drain(receive, batch)
            while _BEHIND <= len(batch) < CATCH_UP_BATCH:
                # behind the head: a bigger batch coalesces more changes of the same routes
                more = len(batch)
                with anyio.move_on_after(_GATHER):
                    batch.append(await receive.receive())  # a memory stream loses nothing
                if len(batch) == more:
                    break
                _drain(receive, batch)
            projection.apply(batch)
    if failure:
        raise failure[0]


def _drain(receive: MemoryObjectReceiveStream[Record], batch: list[Record]) -> None:
    while len(batch) < CATCH_UP_BATCH:
        try:
            batch.append(receive.receive_nowait())
        except anyio.WouldBlock:
            return


async def serve_log(
    log_url: str,
    listen: Sequence[tuple[str, int]],
    *,
    admin: tuple[str, int] | None = None,
    settings: ProxySettings | None = None,
    etcd: EtcdOptions | None = None,
    task_status: anyio.abc.TaskStatus[list[int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the routes of ``log_url`` on ``listen`` until cancelled; ``started(ports)``."""
    plane = DataPlane(RoutingTable(), settings or ProxySettings())
    projection = PlaneProjection(plane)
    async with anyio.create_task_group() as tg:
        await tg.start(
            lambda task_status: follow_log(log_url, projection, etcd=etcd, task_status=task_status)
        )
        ports = []
        for host, port in listen:
            ports.append(await tg.start(plane.serve_tcp, host, port))
        if admin is not None:
            await tg.start(plane.serve_admin, *admin)
        task_status.started(ports)
