"""A data-plane node that serves the route log directly: ``eventproxy dataplane --log-url``.

It opens the log read-only, folds it, and follows it with ``watch``: every appended batch is
applied to the node's routing table as it arrives. Several nodes may follow the same log (a file
on one machine today; etcd later); none of them writes. If the writer compacts past a node's
position, the node reloads from the snapshot and applies the difference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anyio
import anyio.abc

from eventproxy_dataplane import DataPlane, ProxySettings, RoutingTable
from eventproxy_dataplane.etcd import EtcdOptions

from ._errors import CompactedError
from .log import open_log
from .projection import PlaneProjection

__all__ = ["follow_log", "serve_log"]

logger = logging.getLogger("eventproxy.serve")


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
                async for record in log.watch(projection.seq + 1):
                    projection.apply([record])
            except CompactedError:
                logger.warning(
                    "%s was compacted past seq %d; reloading from its snapshot",
                    log_url,
                    projection.seq,
                )
                projection.reset(await log.load_table())
                continue
            return  # the log was closed


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
