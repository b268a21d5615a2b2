"""A data-plane node that serves the route log directly: ``eventproxy dataplane --log-url``.

It opens the log read-only, folds it, and follows it with one ``watch``: a task pumps the
watched records into a bounded buffer, and the node takes whatever has arrived (up to
``CATCH_UP_BATCH`` records) as one batch, folded in place and applied to its routing table in
one step: the plane gets only the batch's net difference, at most one change per route. A node
that fell behind by m records on n routes catches up in O(m) folding plus at most
n plane changes per batch; with batches as big as ``CATCH_UP_BATCH`` (100,000) that is about
the work of a replay (fold m records, install n routes). At the head, each record is applied
as it arrives. Several
nodes may follow the same log (a file on one machine, or etcd); none of them writes. If the
writer compacts past a node's position, the node reloads from the snapshot and applies the
difference.

While etcd is unreachable or has no quorum (at start-up, or later), a node serves what it has
(its last-known-good table) and retries with back-off; a ``/health?min_seq=N`` for a seq it
lacks (the hub confirming a change) cuts that back-off short and is passed on to the log's
watchers (:meth:`~eventproxy.log.etcd.EtcdRouteLog.nudge`), so the node follows again the
moment a change is waited for, not up to 5 s later.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream

from eventproxy_dataplane import DataPlane, ProxySettings, RoutingTable
from eventproxy_dataplane.etcd import EtcdOptions

from ._errors import CompactedError, CorruptLogError, LogResetError, LogUnavailableError
from .events import Record, now_utc, packb, unpackb
from .log import RouteLog, open_log, redact_url
from .log.etcd import EtcdRouteLog, back_off
from .projection import PlaneProjection
from .snapshot import Snapshot, snapshot_from_wire, snapshot_to_wire
from .table import RouteTable

__all__ = ["follow", "follow_log", "follow_log_node", "serve_log"]

logger = logging.getLogger("eventproxy.serve")

# records applied as one batch at most while behind the head: big, so that a node far behind
# changes each route of its plane about once (as a replay does), not once per small batch
CATCH_UP_BATCH = 100_000
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


async def follow(
    log: RouteLog,
    projection: PlaneProjection,
    *,
    on_batch: Callable[[], None] | None = None,
    max_batch: int = CATCH_UP_BATCH,
) -> None:
    """Apply ``log``'s records past ``projection.seq`` in batches (of at most ``max_batch``
    records) until the log is closed.

    Raises :class:`CompactedError` when the log was compacted past the projection's position,
    :class:`LogResetError` when its store was wiped or restored from an older backup.
    """
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, not {max_batch}")
    send, receive = anyio.create_memory_object_stream[Record](max_batch)
    failure: list[CompactedError | LogResetError] = []

    async def pump() -> None:
        async with send:
            try:
                async for record in log.watch(projection.seq + 1):
                    try:  # no checkpoint while records keep coming: they arrive as one batch
                        send.send_nowait(record)
                    except anyio.WouldBlock:
                        await send.send(record)
            except (CompactedError, LogResetError) as exc:
                failure.append(exc)

    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(pump)
        async for record in receive:
            batch = [record]
            _drain(receive, batch, max_batch)
            while min(_BEHIND, max_batch) <= len(batch) < max_batch:
                # behind the head: a bigger batch coalesces more changes of the same routes
                more = len(batch)
                with anyio.move_on_after(_GATHER):
                    batch.append(await receive.receive())  # a memory stream loses nothing
                if len(batch) == more:
                    break
                _drain(receive, batch, max_batch)
            projection.apply(batch)
            if on_batch is not None:
                on_batch()
    if failure:
        raise failure[0]


def _drain(receive: MemoryObjectReceiveStream[Record], batch: list[Record], limit: int) -> None:
    while len(batch) < limit:
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


# -- a node with a last-known-good table -------------------------------------------------------

LKG_FILE = "last-known-good.msgpack"
_LKG_INTERVAL = 0.5  # seconds between two writes of the last-known-good file at most


def _write_lkg_sync(state_dir: Path, payload: bytes) -> None:
    """Write the last-known-good file atomically: temp file, fsync, rename, fsync the dir."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / (LKG_FILE + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, state_dir / LKG_FILE)
    fd = os.open(state_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lkg_sync(state_dir: Path) -> RouteTable | None:
    path = state_dir / LKG_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.error("cannot read the last-known-good table %s: %s", path, exc)
        return None
    try:
        return snapshot_from_wire(unpackb(data), where=str(path)).table
    except (CorruptLogError, ValueError) as exc:
        logger.error("ignoring a damaged last-known-good table %s: %s", path, exc)
        return None


class _Retry:
    """A node's back-off while its log is unavailable, cut short when a reader asks for a seq
    the node does not have (``DataPlane.on_seq_wanted``: the hub confirming a change), which
    is also passed on to the log's watchers (:meth:`EtcdRouteLog.nudge`)."""

    def __init__(self) -> None:
        self.log: EtcdRouteLog | None = None
        self._wake: anyio.Event | None = None
        self._failures = 1

    @property
    def delay(self) -> float:
        return back_off(self._failures)

    def seq_wanted(self, seq: int) -> None:
        if self.log is not None:
            self.log.nudge(seq)
        if self._wake is not None:
            self._wake.set()

    async def wait(self) -> None:
        """Sleep the current back-off (the log watchers' :func:`back_off`), or less if asked."""
        self._wake = wake = anyio.Event()
        try:
            with anyio.move_on_after(self.delay):
                await wake.wait()
        finally:
            self._wake = None
        self._failures += 1


class _Node:
    """The state a log-following node reports on ``/health``."""

    def __init__(self, plane: DataPlane, projection: PlaneProjection, log_url: str) -> None:
        self.plane = plane
        self.projection = projection
        self.log_url = redact_url(log_url)
        self.source = "last-known-good"
        self.reset: str | None = None

    def report(self) -> None:
        self.plane.report_status(
            applied_seq=self.projection.seq,
            routes=len(self.projection.table),
            source=self.source,
            log_url=self.log_url,
            status="log-reset" if self.reset else None,
            log_reset=self.reset,
        )


async def follow_log_node(
    log_url: str,
    plane: DataPlane,
    *,
    state_dir: str | os.PathLike[str] | None = None,
    etcd: EtcdOptions | None = None,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """A data-plane node's source: the log, with a last-known-good table in ``state_dir``.

    At start-up the last-known-good table (if any) is served at once; the log is then opened
    (retried with back-off while etcd is unreachable or has no quorum) and followed, and the
    table is written back to ``state_dir`` atomically as it changes. ``/health`` says which
    table is served (``source``: ``live`` or ``last-known-good``) and the applied seq. A log
    that was wiped or restored from an older backup (or is behind the last-known-good table)
    is reported on ``/health`` (``status: log-reset``) and in the log (ERROR), and the node
    keeps serving its last table, marked last-known-good, until it is restarted.
    """
    projection = PlaneProjection(plane)
    node = _Node(plane, projection, log_url)
    directory = Path(state_dir) if state_dir is not None else None
    lkg = await anyio.to_thread.run_sync(_read_lkg_sync, directory) if directory else None
    if lkg is not None:
        projection.reset(lkg)
        logger.warning(
            "serving the last-known-good table (seq %d, %d routes) until %s answers",
            lkg.seq,
            len(lkg),
            node.log_url,
        )
    node.report()
    task_status.started(projection.seq)
    if etcd is not None:
        etcd = dataclasses.replace(etcd, timeout=min(etcd.timeout, 2.0))
    retry = _Retry()
    plane.on_seq_wanted = retry.seq_wanted
    remote = log_url.split(":", 1)[0].lower() in ("etcd", "etcds")
    while True:
        try:
            log = await open_log(log_url, readonly=True, etcd=etcd)
        except LogUnavailableError as exc:
            if not remote:
                raise  # a local file that is missing is a mistake, not an outage
            logger.warning("cannot open %s: %s; retrying in %.1fs", node.log_url, exc, retry.delay)
            await retry.wait()
            continue
        break
    if isinstance(log, EtcdRouteLog):
        retry.log = log
    async with log, anyio.create_task_group() as tg:
        dirty = anyio.Event()

        async def save() -> None:
            nonlocal dirty
            assert directory is not None
            while True:
                await dirty.wait()
                dirty = anyio.Event()
                table = projection.table
                payload = packb(snapshot_to_wire(Snapshot(ts=now_utc(), table=table)))
                try:
                    await anyio.to_thread.run_sync(_write_lkg_sync, directory, payload)
                except OSError as exc:
                    logger.error("cannot write the last-known-good table: %s", exc)
                await anyio.sleep(_LKG_INTERVAL)

        if directory is not None:
            tg.start_soon(save)

        def changed() -> None:
            node.report()
            dirty.set()

        def on_connection(connected: bool, reason: str) -> None:
            if node.reset is None:
                node.source = "live" if connected else "last-known-good"
            node.report()

        if isinstance(log, EtcdRouteLog):
            log.on_connection = on_connection

        async def load() -> RouteTable:
            """The log's table; while etcd is unavailable (again), retried with back-off."""
            while True:
                try:
                    return await log.load_table()
                except LogUnavailableError as exc:
                    if not remote:
                        raise
                    logger.warning(
                        "cannot read %s: %s; serving seq %d, retrying in %.1fs",
                        node.log_url,
                        exc,
                        projection.seq,
                        retry.delay,
                    )
                    await retry.wait()

        try:
            table = await load()
            if lkg is not None and table.seq < lkg.seq:
                raise LogResetError(
                    f"route log {node.log_url} is at seq {table.seq}, behind this node's "
                    f"last-known-good table (seq {lkg.seq}): it was wiped or restored from an "
                    "older backup",
                    seen_head=lkg.seq,
                    head=table.seq,
                )
            projection.reset(table)
            node.source = "live"
            changed()
            logger.info(
                "following %s from seq %d (%d routes)",
                node.log_url,
                projection.seq,
                len(projection.table),
            )
            while True:
                try:
                    await follow(log, projection, on_batch=changed)
                    return
                except CompactedError:
                    projection.reset(await load())
                    changed()
        except LogResetError as exc:
            node.reset = str(exc)
            node.source = "last-known-good"
            node.report()
            while True:  # say so, loudly and repeatedly, until an operator restarts the node
                logger.error(
                    "%s Serving the last table (seq %d, %d routes) as last-known-good; "
                    "restart this node once the log is repaired.",
                    exc,
                    projection.seq,
                    len(projection.table),
                )
                await anyio.sleep(60)
