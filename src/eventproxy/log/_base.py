"""The RouteLog port and the in-memory state every local backend shares.

Theory of operation
-------------------
A route log holds, in order: an optional base :class:`~eventproxy.snapshot.Snapshot` (written by
compaction) and the records after it, with gap-free ``seq`` numbers starting at 1. ``head`` is
the last seq (0 for an empty log). Records before the snapshot may have been dropped;
``first_available`` is the first seq that :meth:`RouteLog.read` can still return.

* ``append(events)`` assigns the next seqs to a batch and makes it durable whole or not at all;
  it returns the seqs only after that. A failed append leaves the log exactly as before.
* ``read(from_seq)`` returns stored records; ``watch(from_seq)`` is an async iterator that yields
  stored records and then new ones as they are appended. It pulls from the log at the consumer's
  pace (no unbounded queue), so a slow consumer costs nothing and misses nothing — unless
  compaction drops records it has not read yet, which raises :class:`CompactedError`.
* ``compact(retention)`` folds the records older than the retention into a new snapshot and
  drops them; replay from snapshot + tail always equals replay from zero.
* Automatic compaction (``auto_compact``, what a long-running writer such as ``EventProxy``
  gets from :func:`~eventproxy.log.open_log`): a local log holds its records in memory, so a
  writer that never compacts grows by every event ever appended. With ``auto_compact = N``, an
  append that leaves more than ``max(N, 2 * routes in the snapshot)`` records after the
  snapshot folds the oldest into a new one and keeps the newest half of that bound: memory and
  file stay proportional to the live routes (plus a bounded tail of recent history), and the
  cost of rewriting the snapshot is spread over at least as many appends as it has routes.
  It spares the records a live watcher of the same log object has not read yet, so a consumer
  that is briefly slow (a busy event loop) misses nothing; only a watcher more than
  ``_WATCHER_SLACK`` bounds behind is left to :class:`CompactedError` (its consumer reloads the
  table, as ``EventProxy`` does), so a stuck consumer cannot hold the writer's memory forever.

Backends implement persistence hooks; this module keeps the state machine (and its checks) in
one place.
"""

from __future__ import annotations

import abc
import bisect
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import anyio

from .._errors import (
    AppendConflictError,
    CompactedError,
    EventProxyError,
    InvalidRouteDataError,
    LogClosedError,
    LogUnavailableError,
)
from .._gc import paused_gc
from ..events import Event, Record, encode_record, now_utc
from ..snapshot import Snapshot
from ..table import RouteTable, fold_all

__all__ = ["CompactionResult", "LocalRouteLog", "RouteLog", "encode_or_refuse", "map_os_errors"]

logger = logging.getLogger("eventproxy")
_READ_CHUNK = 1024
# automatic compaction waits for a lagging watcher until this many times its bound are held
_WATCHER_SLACK = 4
_T = TypeVar("_T")
# what msgpack raises for a value it cannot encode (a str with a lone surrogate is a
# UnicodeEncodeError, a ValueError; an object mutated into route data after validation, TypeError)
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError)


def encode_or_refuse(encode: Callable[[], _T], records: Sequence[Record]) -> _T:
    """``encode()`` (the storage encoding of ``records``), or :class:`InvalidRouteDataError`
    naming the first record that cannot be encoded. Called before anything is stored, so a batch
    holding such a record is refused whole and the log stays unchanged."""
    try:
        return encode()
    except _ENCODE_ERRORS as exc:
        for record in records:
            try:
                encode_record(record)
            except _ENCODE_ERRORS as one:
                raise InvalidRouteDataError(
                    f"route {record.event.routespec!r} cannot be stored in the log: {one}; "
                    "the batch was not appended"
                ) from one
        raise InvalidRouteDataError(f"batch cannot be stored in the log: {exc}") from exc


@contextlib.contextmanager
def map_os_errors(where: object, operation: str) -> Iterator[None]:
    """Translate an ``OSError`` raised inside into :class:`LogUnavailableError`.

    The one place where a storage failure becomes an eventproxy error: the message names the
    log (``where``: its path or URL), the ``operation`` that failed and the system's reason, and
    the ``OSError`` stays attached as ``__cause__``. eventproxy's own errors pass through.
    """
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise LogUnavailableError(f"route log {where}: {operation}: {reason}") from exc


@dataclass(frozen=True, slots=True)
class CompactionResult:
    snapshot_seq: int  # the new base snapshot's seq (unchanged if nothing was old enough)
    dropped: int  # records dropped
    retained: int  # records kept after the snapshot


class RouteLog(abc.ABC):
    """The port every route log backend implements."""

    url: str

    @abc.abstractmethod
    async def append(
        self,
        events: Sequence[Event],
        *,
        actor: str = "eventproxy",
        expected_head: int | None = None,
    ) -> list[int]:
        """Append ``events`` as one atomic batch; return their seqs once durable.

        With ``expected_head`` the batch is appended only if the log's head is still that seq,
        else :class:`AppendConflictError` (optimistic concurrency for several writers).
        """

    @abc.abstractmethod
    async def read(self, from_seq: int = 1, *, limit: int | None = None) -> list[Record]:
        """Stored records with seq >= ``from_seq`` (``CompactedError`` if already dropped)."""

    @abc.abstractmethod
    def watch(self, from_seq: int = 1) -> AsyncIterator[Record]:
        """Every record from ``from_seq`` on, waiting for new ones; ends when the log closes."""

    @abc.abstractmethod
    async def head(self) -> int:
        """The seq of the last record (0 when empty)."""

    @abc.abstractmethod
    async def snapshot(self) -> Snapshot | None:
        """The base snapshot written by the last compaction, if any."""

    @abc.abstractmethod
    async def compact(
        self, *, retention: timedelta, now: datetime | None = None
    ) -> CompactionResult:
        """Snapshot the records older than ``retention`` and drop them."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the log's resources (locks, files, connections)."""

    def appended(self, seqs: Sequence[int]) -> list[Record] | None:
        """The records of the batch this log object appended as ``seqs``, as stored, if it
        still has them in memory (no I/O); ``None`` when it does not (then :meth:`read` them).
        A writer applies its own batch with them instead of reading it back."""
        return None

    def accept_reset(self) -> None:
        """After :class:`LogResetError`: follow the store's current history from now on.

        Local logs never report a reset, so there is nothing to forget.
        """
        return None

    async def load_table(self, *, at: int | None = None) -> RouteTable:
        """The table folded from the snapshot and the records (up to seq ``at`` if given)."""
        base = await self.snapshot()
        table = base.table if base is not None else RouteTable()
        if at is not None and at < table.seq:
            raise CompactedError(
                f"seq {at} is before the oldest snapshot (seq {table.seq}); "
                "records before it were compacted away",
                first_available=table.seq,
            )
        records = await self.read(table.seq + 1)
        if at is not None:
            records = [r for r in records if r.seq <= at]
        with paused_gc():
            return fold_all(table, records)

    async def __aenter__(self) -> RouteLog:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class _Watch(AsyncIterator[Record]):
    """A pull-based cursor over a local log: holds a position and a small read-ahead buffer only.

    A class rather than an async generator, so that a consumer that stops early (``break``,
    cancellation) leaves nothing to finalise.
    """

    __slots__ = ("__weakref__", "_buffer", "_cursor", "_log")

    def __init__(self, log: LocalRouteLog, cursor: int) -> None:
        self._log = log
        self._cursor = cursor
        self._buffer: list[Record] = []
        log._watches.add(self)

    def __aiter__(self) -> _Watch:
        return self

    async def __anext__(self) -> Record:
        log = self._log
        while not self._buffer:
            if log._closed:
                raise StopAsyncIteration
            await log._refresh()
            batch = log._slice(self._cursor, _READ_CHUNK)
            if batch:
                batch.reverse()
                self._buffer = batch
                break
            await log._wait_for_change(self._cursor - 1)
        record = self._buffer.pop()
        self._cursor = record.seq + 1
        return record


class LocalRouteLog(RouteLog):
    """A log whose whole state lives in this process (memory and file backends).

    Subclasses persist through :meth:`_persist_batch` and :meth:`_persist_compaction`, both of
    which must either complete or leave storage unchanged and raise. Both encode what they store
    through :func:`encode_or_refuse` first, so that every backend refuses the same records.
    """

    def __init__(self, url: str, *, auto_compact: int | None = None) -> None:
        if auto_compact is not None and auto_compact < 2:
            raise ValueError(f"auto_compact must be at least 2 records, got {auto_compact}")
        self.url = url
        self.auto_compact = auto_compact
        self._snapshot_obj: Snapshot | None = None
        # a base snapshot still encoded (a follower's reload, see FileRouteLog): its seq, and
        # how to decode it when somebody asks (a follower past it never does)
        self._lazy_snapshot: tuple[int, Callable[[], Snapshot]] | None = None
        self._records: list[Record] = []
        self._seqs: list[int] = []  # parallel to _records, for bisect
        self._closed = False
        self._lock: anyio.Lock | None = None
        self._changed: anyio.Event | None = None
        # A batch whose append was interrupted (cancelled) while it was being persisted: it
        # may or may not be stored. The next writer settles it before choosing new seqs.
        self._in_doubt: list[Record] | None = None
        # live watchers (weakly: one dropped mid-stream stops counting as soon as it is gone),
        # whose positions automatic compaction spares
        self._watches: weakref.WeakSet[_Watch] = weakref.WeakSet()

    # -- state helpers ---------------------------------------------------------------------

    @property
    def _snapshot(self) -> Snapshot | None:
        """The base snapshot (decoded on first use if :meth:`_install` got it encoded)."""
        lazy = self._lazy_snapshot
        if lazy is not None:
            self._snapshot_obj = lazy[1]()
            self._lazy_snapshot = None
        return self._snapshot_obj

    @property
    def _base_seq(self) -> int:
        if self._lazy_snapshot is not None:
            return self._lazy_snapshot[0]
        return self._snapshot_obj.seq if self._snapshot_obj is not None else 0

    @property
    def _head(self) -> int:
        return self._records[-1].seq if self._records else self._base_seq

    @property
    def first_available(self) -> int:
        return self._records[0].seq if self._records else self._head + 1

    def _install(
        self,
        snapshot: Snapshot | None,
        records: list[Record],
        *,
        lazy: tuple[int, Callable[[], Snapshot]] | None = None,
    ) -> None:
        """Make ``snapshot`` (or, instead, the encoded ``lazy`` one: its seq and its decoder)
        and ``records`` the log's state."""
        self._snapshot_obj = snapshot
        self._lazy_snapshot = lazy
        self._records = records
        self._seqs = [r.seq for r in records]

    def _compaction_due(self) -> int:
        """How many of the oldest records an automatic compaction folds now (0: none due)."""
        if self.auto_compact is None:
            return 0
        live = len(self._snapshot.table) if self._snapshot is not None else 0
        bound = max(self.auto_compact, 2 * live)
        held = len(self._records)
        if held <= bound:
            return 0
        old = held - bound // 2
        lagging = min((w._cursor for w in self._watches), default=None)
        if lagging is not None and held <= _WATCHER_SLACK * bound:
            # spare what a live watcher has yet to read: fold only the records before its
            # cursor, and only once they are a quarter of the bound (a snapshot rewrite costs
            # as much as the routes it holds, so it must stay spread over many appends)
            readable = bisect.bisect_left(self._seqs, lagging)
            if readable < old:
                old = readable if readable >= max(bound // 4, 2) else 0
        return old

    async def _fold_oldest(self, old: int) -> Snapshot:
        """Fold the ``old`` oldest records into a new snapshot and drop them (writer lock held)."""
        base = self._snapshot.table if self._snapshot is not None else RouteTable()
        table = fold_all(base, self._records[:old])
        snapshot = Snapshot(ts=now_utc(), table=table)
        kept = self._records[old:]
        await self._persist_compaction(snapshot, kept)
        self._install(snapshot, kept)
        return snapshot

    async def _auto_compact(self) -> None:
        """After an append (writer lock held): compact if due. The append is durable already, so
        a failed compaction is logged and left for the next append (the log is unchanged, or
        broken and then refusing appends, as :meth:`compact` documents)."""
        old = self._compaction_due()
        if not old:
            return
        try:
            with anyio.CancelScope(shield=True):
                await self._fold_oldest(old)
        except EventProxyError as exc:
            logger.warning("route log %s: automatic compaction failed: %s", self.url, exc)

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"route log {self.url} is closed")

    def appended(self, seqs: Sequence[int]) -> list[Record] | None:
        if not seqs:
            return None
        try:
            records = self._slice(seqs[0], len(seqs))
        except CompactedError:
            return None
        return records if [r.seq for r in records] == list(seqs) else None

    def _writer_lock(self) -> anyio.Lock:
        """Serialises appends and compactions (made on first use, inside the event loop)."""
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _slice(self, from_seq: int, limit: int | None) -> list[Record]:
        from_seq = max(from_seq, 1)
        if (self._records and from_seq < self._records[0].seq) or (
            not self._records and from_seq <= self._base_seq
        ):
            raise CompactedError(
                f"records before seq {self.first_available} of {self.url} were compacted into "
                f"the snapshot at seq {self._base_seq}; read the snapshot first",
                first_available=self.first_available,
            )
        start = bisect.bisect_left(self._seqs, from_seq)
        stop = len(self._records) if limit is None else start + limit
        return self._records[start:stop]

    # -- hooks -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def _persist_batch(self, records: list[Record]) -> None: ...

    @abc.abstractmethod
    async def _persist_compaction(self, snapshot: Snapshot, records: list[Record]) -> None: ...

    async def _refresh(self) -> None:
        """Pick up changes made by another process (read-only file logs)."""

    async def _landed(self, records: list[Record]) -> bool:
        """Whether a batch whose :meth:`_persist_batch` was interrupted is stored after all.

        Called with the writer lock held; waits for storage still in progress. Backends whose
        persisting cannot be interrupted half-way (memory) keep this default.
        """
        return False

    async def _settle_in_doubt(self) -> None:
        """Install an interrupted batch that was stored after all, so its seqs are never reused."""
        records, self._in_doubt = self._in_doubt, None
        if records is not None and await self._landed(records):
            self._records.extend(records)
            self._seqs.extend(r.seq for r in records)
            self._notify()

    async def _wait_for_change(self, head: int) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        changed = self._changed
        if self._head != head:
            return
        await changed.wait()

    # -- the port --------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[Event],
        *,
        actor: str = "eventproxy",
        expected_head: int | None = None,
    ) -> list[int]:
        self._check_open()
        events = list(events)
        if not events:
            return []
        async with self._writer_lock():
            self._check_open()
            await self._settle_in_doubt()
            await self._refresh()
            head = self._head
            if expected_head is not None and expected_head != head:
                raise AppendConflictError(
                    f"{self.url}: expected head {expected_head}, but the log is at {head}"
                )
            ts = now_utc()
            records = [
                Record(seq=head + 1 + i, ts=ts, actor=actor, event=event)
                for i, event in enumerate(events)
            ]
            # Until installed, the batch is in doubt: a caller cancelled while it is persisted
            # (asyncio's own cancellation is not held off by anyio's shields) leaves it to the
            # next writer, which asks the backend whether it landed.
            self._in_doubt = records
            await self._persist_batch(records)
            self._in_doubt = None
            self._records.extend(records)
            self._seqs.extend(r.seq for r in records)
            await self._auto_compact()
        self._notify()
        return [r.seq for r in records]

    async def read(self, from_seq: int = 1, *, limit: int | None = None) -> list[Record]:
        self._check_open()
        await self._refresh()
        return self._slice(from_seq, limit)

    def watch(self, from_seq: int = 1) -> AsyncIterator[Record]:
        return _Watch(self, max(from_seq, 1))

    async def head(self) -> int:
        self._check_open()
        await self._refresh()
        return self._head

    async def snapshot(self) -> Snapshot | None:
        self._check_open()
        await self._refresh()
        return self._snapshot

    async def compact(
        self, *, retention: timedelta, now: datetime | None = None
    ) -> CompactionResult:
        self._check_open()
        if retention < timedelta(0):
            raise ValueError(f"retention must not be negative, got {retention}")
        cutoff = (now or now_utc()) - retention
        async with self._writer_lock():
            self._check_open()
            await self._refresh()
            old = 0
            while old < len(self._records) and self._records[old].ts <= cutoff:
                old += 1
            if old == 0:
                return CompactionResult(self._base_seq, 0, len(self._records))
            snapshot = await self._fold_oldest(old)
        self._notify()
        return CompactionResult(snapshot.seq, old, len(self._records))

    async def aclose(self) -> None:
        self._closed = True
        self._notify()
