"""``etcd://h1:2379,h2:2379/prefix`` and ``etcds://`` (TLS): the route log in an etcd cluster.

Theory of operation
-------------------
Keys, all under ``PREFIX/`` (the URL's path, default ``eventproxy``):

* ``head`` -- msgpack ``{seq, log}``: the last seq and the *log id*, a random id made by the
  first append. Every append is one txn that compares ``head``'s ``mod_revision`` and value with
  the ones it last saw, so seqs stay gap-free and a batch lands whole even with several writers.
  A writer remembers the head its last txn wrote and appends on it directly (one round trip);
  when another writer moved it, the failed txn returns the current head (same round trip) and
  the batch is numbered again on that.
* ``b/<last seq, 20 digits>`` -- one appended batch: msgpack ``{first, data}`` where ``data`` is
  the msgpack list of its records, or ``{first, chunks: [keys]}`` when the batch is too big for
  one etcd request. Keyed by the *last* seq, so the batch holding seq N is the first key at or
  after ``b/N``.
* ``c/<last seq>/<token>/<i>`` -- chunks of a big batch, written (by plain puts) *before* the txn
  that commits the batch; until then nobody reads them. Chunks of a writer that lost the race are
  deleted by it, or by the next compaction.
* ``snap`` -- the base snapshot (same encoding as the file log's), inline or chunked under
  ``s/<seq>/<token>/<i>``.

Requests stay under etcd's request limit (1.5 MiB by default; ``EtcdOptions.max_request_bytes``):
batches and snapshots over ``_INLINE_MAX`` bytes are chunked, every txn has at most a handful of
operations (etcd allows 128).

* ``append`` without ``expected_head`` retries on a conflicting concurrent writer: it re-reads
  the head and numbers its batch again (at most ``_MAX_ATTEMPTS`` times, then
  :class:`AppendConflictError`). With ``expected_head`` it never retries: a moved head raises
  :class:`AppendConflictError` at once. A commit whose answer was lost (the member died) is
  resolved by reading the batch key back: it either holds exactly our batch (success) or not
  (retried as a conflict).
* ``read`` is one txn of ranges (head, snap, first page of batches) at one revision, further
  pages pinned to that revision: a consistent cut.
* ``watch(from_seq)`` reads the batches from ``from_seq`` and then follows an etcd watch from
  the next revision (no polling). After a dropped stream or a restarted member it reconnects
  (with back-off, logging each failure) and resumes from the last revision it saw; if etcd
  compaction removed that revision it recovers by reading the keys again from its cursor.
  ``nudge(seq)`` (a node asked for a seq it lacks) cuts a back-off short, and makes a stream
  that has not brought that seq within ``RECHECK_AFTER`` seconds read the keys again.
* Each reader remembers the store's identity: the cluster id, the log id, the highest revision
  and head seen. A cluster id or log id that changes, a revision or a head that goes backwards,
  means the store was wiped or restored from an older backup: :class:`LogResetError`, never a
  silent switch to another history.
* Every etcd failure becomes a :class:`LogError` naming the endpoint and what failed
  (:class:`LogUnavailableError` for unreachable / no quorum / unknown outcome,
  :class:`LogAccessError` for refused credentials); nothing is half-applied.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

import anyio
import msgpack

from eventproxy_dataplane.etcd import (
    EtcdAuthError,
    EtcdClient,
    EtcdCompactedError,
    EtcdError,
    EtcdOptions,
    EtcdOutcomeUnknownError,
    EtcdUnavailableError,
    EtcdWatch,
    KeyValue,
    WatchBatch,
    compare_mod_revision,
    compare_value,
    delete_op,
    prefix_end,
    put_op,
    range_op,
)

from .._errors import (
    AppendConflictError,
    CompactedError,
    CorruptLogError,
    InvalidLogURLError,
    LogAccessError,
    LogClosedError,
    LogError,
    LogResetError,
    LogUnavailableError,
)
from .._gc import paused_gc
from ..events import Event, Record, now_utc, packb, record_to_wire, records_from_wire, unpackb
from ..snapshot import Snapshot, snapshot_from_wire, snapshot_to_wire
from ..table import RouteTable, fold_all
from ._base import CompactionResult, RouteLog, encode_or_refuse
from ._urls import redact_url

__all__ = ["EtcdRouteLog", "etcd_options_from_env", "parse_etcd_url"]

logger = logging.getLogger("eventproxy.log.etcd")

_INLINE_MAX = 1024 * 1024  # a batch or snapshot bigger than this is written in chunks
_MAX_ATTEMPTS = 100  # conflicting appends before a plain append gives up
_PAGE = 256  # batch keys per range request (adapted to the answer's size)
_PAGE_BYTES = 8 * 1024 * 1024
_SEQ = "%020d"
#: seconds a watch stream gets to bring a seq somebody asked for before the keys are read again
RECHECK_AFTER = 1.0


def back_off(failures: int) -> float:
    """Seconds a watcher waits after its ``failures``-th failure in a row: 0.1, 0.2 ... 5."""
    return min(0.05 * 2.0 ** min(failures, 7), 5.0)


ENV_PREFIX = "EVENTPROXY_ETCD_"


def etcd_options_from_env(environ: dict[str, str] | None = None) -> EtcdOptions:
    """Credentials and TLS files from ``EVENTPROXY_ETCD_{USERNAME,PASSWORD,CA_FILE,CERT_FILE,
    KEY_FILE}`` (unset or empty: not used)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(ENV_PREFIX + name) or None

    return EtcdOptions(
        username=get("USERNAME"),
        password=get("PASSWORD"),
        ca_file=get("CA_FILE"),
        cert_file=get("CERT_FILE"),
        key_file=get("KEY_FILE"),
    )


def parse_etcd_url(url: str) -> tuple[str, bool, str]:
    """``etcd[s]://h1:2379,h2:2379/prefix`` -> (endpoints, tls, prefix)."""
    safe = redact_url(url)
    scheme, _, rest = url.partition("://")
    tls = scheme.lower() == "etcds"
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise InvalidLogURLError(
            f"log URL {safe!r}: credentials never go in the URL; use the etcd_username / "
            "etcd_password traits, --etcd-username / --etcd-password-file or "
            "EVENTPROXY_ETCD_USERNAME / EVENTPROXY_ETCD_PASSWORD"
        )
    if not netloc:
        raise InvalidLogURLError(f"log URL {safe!r} names no etcd endpoint (etcd://host:2379/p)")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidLogURLError(f"log URL {safe!r} must not have a query or fragment")
    prefix = unquote(path).strip("/") or "eventproxy"
    if any(not seg for seg in prefix.split("/")):
        raise InvalidLogURLError(f"log URL {safe!r}: the key prefix {prefix!r} has empty segments")
    return netloc, tls, prefix


@contextlib.contextmanager
def _mapped(url: str, what: str) -> Iterator[None]:
    """etcd client errors -> log errors that name the endpoint and what failed."""
    try:
        yield
    except EtcdAuthError as exc:
        raise LogAccessError(f"route log {url}: {what}: {exc}") from exc
    except EtcdUnavailableError as exc:
        raise LogUnavailableError(f"route log {url}: {what}: {exc}") from exc
    except EtcdCompactedError:
        raise
    except EtcdError as exc:
        raise LogError(f"route log {url}: {what}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Head:
    seq: int
    log_id: str
    mod_revision: int  # 0: no head key (an empty log)
    value: bytes = b""  # the head key's bytes, as stored

    @classmethod
    def decode(cls, kv: KeyValue | None, where: str) -> _Head:
        if kv is None:
            return cls(0, "", 0)
        try:
            doc = unpackb(kv.value)
            seq, log_id = doc["seq"], doc["log"]
        except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise CorruptLogError(f"{where}: the head key is not valid: {exc}") from None
        if type(seq) is not int or seq < 0 or type(log_id) is not str:
            raise CorruptLogError(f"{where}: the head key is not valid: {doc!r}")
        return cls(seq, log_id, kv.mod_revision, kv.value)


@dataclass
class _Identity:
    """What a reader has seen of the store, to notice a wipe or an older backup."""

    cluster_id: str = ""
    log_id: str = ""
    revision: int = 0
    head: int = 0

    def check(self, url: str, cluster_id: str, revision: int, head: _Head) -> None:
        problems = []
        if self.cluster_id and cluster_id and cluster_id != self.cluster_id:
            problems.append(f"the etcd cluster id changed from {self.cluster_id} to {cluster_id}")
        if self.log_id and head.log_id != self.log_id:
            now = head.log_id or "none (the log is empty)"
            problems.append(f"the log id changed from {self.log_id} to {now}")
        if revision < self.revision:
            problems.append(f"the store revision went back from {self.revision} to {revision}")
        if head.seq < self.head:
            problems.append(f"the head went back from seq {self.head} to seq {head.seq}")
        if problems:
            raise LogResetError(
                f"route log {url} was wiped or restored from an older backup: "
                + "; ".join(problems)
                + ". The routes served until now are no longer in the log.",
                seen_head=self.head,
                head=head.seq,
            )
        self.cluster_id = cluster_id or self.cluster_id
        self.log_id = head.log_id or self.log_id
        self.revision = max(self.revision, revision)
        self.head = max(self.head, head.seq)

    def copy(self) -> _Identity:
        return _Identity(self.cluster_id, self.log_id, self.revision, self.head)

    def merge(self, other: _Identity) -> None:
        self.cluster_id = other.cluster_id or self.cluster_id
        self.log_id = other.log_id or self.log_id
        self.revision = max(self.revision, other.revision)
        self.head = max(self.head, other.head)

    def check_event(self, url: str, head: _Head | None, revision: int) -> None:
        """A watched change of the head key, at ``revision`` (historic: maybe older than reads
        made since). Only a new log id or a deleted head can say the store was reset; what
        it shows is remembered (the log id, the highest head and revision), so that a later
        wipe or an older backup is noticed by a follower that has only watched so far (it
        read the log when it was empty or at an older head)."""
        if head is None:
            if self.head or self.log_id:
                self.check(url, "", self.revision, _Head(0, "", 0))
            return
        if self.log_id and head.log_id and head.log_id != self.log_id:
            self.check(url, "", self.revision, head)
        self.log_id = self.log_id or head.log_id
        self.head = max(self.head, head.seq)
        self.revision = max(self.revision, revision)


@dataclass(frozen=True, slots=True)
class _View:
    """A consistent read: the head, the base snapshot's seq and batches from a seq on."""

    head: _Head
    snap: KeyValue | None
    batches: list[KeyValue]
    revision: int
    cluster_id: str
    more: bool


class EtcdRouteLog(RouteLog):
    """The route log in etcd; see the module documentation."""

    def __init__(
        self, url: str, client: EtcdClient, prefix: str, *, readonly: bool = False
    ) -> None:
        self.url = redact_url(url)
        self.client = client
        self.readonly = readonly
        self.prefix = prefix.encode() + b"/"
        self._head_key = self.prefix + b"head"
        self._snap_key = self.prefix + b"snap"
        self._batches = self.prefix + b"b/"
        self._chunks = self.prefix + b"c/"
        self._snap_chunks = self.prefix + b"s/"
        self._closed = False
        self._scopes: weakref.WeakSet[_EtcdWatch] = weakref.WeakSet()
        # open watch streams, held strongly: a watcher dropped without being exhausted (a
        # consumer that breaks out of its loop) leaves its stream here, closed with the log
        self._streams: set[EtcdWatch] = set()
        self.identity = _Identity()
        # the head this writer's last txn wrote or saw (None: read it before appending)
        self._known_head: _Head | None = None
        self._last_appended: list[Record] = []
        #: called with (connected, reason) when a watch loses or regains etcd
        self.on_connection: Callable[[bool, str], None] | None = None

    @classmethod
    async def open(
        cls, url: str, *, readonly: bool = False, options: EtcdOptions | None = None
    ) -> EtcdRouteLog:
        endpoints, tls, prefix = parse_etcd_url(url)
        try:
            client = EtcdClient(endpoints, options or etcd_options_from_env(), tls=tls)
        except ValueError as exc:
            raise InvalidLogURLError(f"log URL {redact_url(url)!r}: {exc}") from None
        self = cls(url, client, prefix, readonly=readonly)
        try:
            before = self.identity.copy()
            view = await self._view(1, limit=1)
            before.check(self.url, view.cluster_id, view.revision, view.head)
            self.identity.merge(before)
        except BaseException:
            await client.aclose()
            raise
        return self

    # -- keys and encoding -----------------------------------------------------------------

    def _batch_key(self, last: int) -> bytes:
        return self._batches + (_SEQ % last).encode()

    def _check_open(self) -> None:
        if self._closed:
            raise LogClosedError(f"route log {self.url} is closed")

    async def _stage(self, area: bytes, seq: int, payload: bytes) -> list[bytes] | None:
        """Write ``payload`` in chunks under ``area<seq>/<token>/``; None when it fits inline."""
        if len(payload) <= _INLINE_MAX:
            return None
        token = uuid.uuid4().hex.encode()
        base = area + (_SEQ % seq).encode() + b"/" + token + b"/"
        keys = []
        for i in range(0, len(payload), _INLINE_MAX):
            key = base + b"%06d" % (i // _INLINE_MAX)
            with _mapped(self.url, "write a chunk"):
                await self.client.put(key, payload[i : i + _INLINE_MAX])
            keys.append(key)
        return keys

    async def _unstage(self, keys: list[bytes] | None) -> None:
        if not keys:
            return
        base = keys[0].rsplit(b"/", 1)[0] + b"/"
        with contextlib.suppress(EtcdError):
            await self.client.delete_range(base, prefix_end(base))

    async def _payload(self, doc: dict[str, Any], where: str, revision: int) -> bytes:
        data = doc.get("data")
        if isinstance(data, bytes):
            return data
        chunks = doc.get("chunks")
        if not isinstance(chunks, list) or not chunks:
            raise CorruptLogError(f"{where}: neither data nor chunks")
        base = chunks[0].rsplit(b"/", 1)[0] + b"/"
        try:
            with _mapped(self.url, f"read the chunks of {where}"):
                result = await self.client.range(base, prefix_end(base), revision=revision)
        except EtcdCompactedError:
            with _mapped(self.url, f"read the chunks of {where}"):
                result = await self.client.range(base, prefix_end(base))
        found = {kv.key: kv.value for kv in result.kvs}
        missing = [k for k in chunks if k not in found]
        if missing:
            raise _ChunksGone(where)
        return b"".join(found[k] for k in chunks)

    async def _decode_batch(self, kv: KeyValue, revision: int) -> list[Record]:
        where = f"{self.url} batch {kv.key.decode(errors='replace')}"
        try:
            doc = unpackb(kv.value)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
            raise CorruptLogError(f"{where}: not msgpack: {exc}") from None
        if not isinstance(doc, dict):
            raise CorruptLogError(f"{where}: not a batch")
        payload = await self._payload(doc, where, revision or kv.mod_revision)
        # many small objects that stay alive: the collector would rescan them over and over
        # (measured: a third of a replay); paused for this one synchronous step only
        with paused_gc():
            try:
                items = unpackb(payload)
            except (ValueError, msgpack.ExtraData, msgpack.FormatError) as exc:
                raise CorruptLogError(f"{where}: records are not msgpack: {exc}") from None
            records = records_from_wire(items, where=where)
        expected = list(range(records[0].seq, records[0].seq + len(records)))
        if [r.seq for r in records] != expected or doc.get("first") != records[0].seq:
            raise CorruptLogError(f"{where}: seqs are not contiguous", seq=records[0].seq)
        return records

    # -- reading ---------------------------------------------------------------------------

    async def _view(self, from_seq: int, *, limit: int = _PAGE, revision: int = 0) -> _View:
        start = self._batch_key(max(from_seq, 1))
        ops = [
            range_op(self._head_key),
            range_op(self._snap_key),
            {
                "request_range": {
                    **range_op(start, prefix_end(self._batches))["request_range"],
                    "limit": str(limit),
                    **({"revision": str(revision)} if revision else {}),
                }
            },
        ]
        with _mapped(self.url, "read"):
            result = await self.client.txn([], ops)
        head_kvs, snap_kvs = result.range_kvs(0), result.range_kvs(1)
        batch_response = result.responses[2].get("response_range") or {}
        batches = [KeyValue.from_wire(kv) for kv in batch_response.get("kvs") or []]
        return _View(
            head=_Head.decode(head_kvs[0] if head_kvs else None, self.url),
            snap=snap_kvs[0] if snap_kvs else None,
            batches=batches,
            revision=result.revision,
            cluster_id=result.cluster_id,
            more=bool(batch_response.get("more")),
        )

    def _snap_seq(self, snap: KeyValue | None) -> int:
        if snap is None:
            return 0
        try:
            doc = unpackb(snap.value)
            return int(doc["seq"])
        except (ValueError, KeyError, TypeError, msgpack.ExtraData, msgpack.FormatError):
            raise CorruptLogError(f"{self.url}: the snapshot key is not valid") from None

    async def _collect(self, from_seq: int, limit: int | None) -> tuple[list[Record], _View]:
        """Records from ``from_seq`` (at most ``limit``) at one revision, and the first view."""
        from_seq = max(from_seq, 1)
        for _ in range(10):  # a chunked batch compacted away mid-read: read again
            try:
                return await self._collect_once(from_seq, limit)
            except _ChunksGone:
                continue
        raise LogUnavailableError(f"route log {self.url}: read kept racing with compactions")

    async def _collect_once(self, from_seq: int, limit: int | None) -> tuple[list[Record], _View]:
        page = _PAGE
        view = first = await self._view(from_seq, limit=page)
        snap_seq = self._snap_seq(view.snap)
        out: list[Record] = []
        cursor = from_seq
        checked = False
        while True:
            for kv in view.batches:
                records = await self._decode_batch(kv, view.revision)
                if not checked:
                    checked = True
                    if records[0].seq > cursor:
                        raise CompactedError(
                            f"records before seq {records[0].seq} of {self.url} were compacted "
                            f"into the snapshot at seq {snap_seq}; read the snapshot first",
                            first_available=records[0].seq,
                        )
                elif records[0].seq != cursor:
                    raise CorruptLogError(
                        f"{self.url}: a gap before seq {records[0].seq}", seq=records[0].seq
                    )
                for record in records:
                    if record.seq >= cursor:
                        out.append(record)
                cursor = records[-1].seq + 1
                if limit is not None and len(out) >= limit:
                    return out[:limit], first
            if not view.more:
                break
            size = sum(len(kv.value) for kv in view.batches)
            page = max(16, page // 2) if size > _PAGE_BYTES else min(page * 2, 4096)
            try:
                view = await self._view(cursor, limit=page, revision=first.revision)
            except EtcdCompactedError:
                raise _ChunksGone("paging") from None
        if not checked and from_seq <= snap_seq:
            raise CompactedError(
                f"records before seq {first.head.seq + 1} of {self.url} were compacted into "
                f"the snapshot at seq {snap_seq}; read the snapshot first",
                first_available=first.head.seq + 1,
            )
        return out, first

    async def read(self, from_seq: int = 1, *, limit: int | None = None) -> list[Record]:
        self._check_open()
        try:
            records, _ = await self._collect(from_seq, limit)
        except EtcdCompactedError as exc:
            raise LogUnavailableError(f"route log {self.url}: read: {exc}") from exc
        return records

    async def head(self) -> int:
        self._check_open()
        with _mapped(self.url, "read the head"):
            result = await self.client.range(self._head_key)
        return _Head.decode(result.kvs[0] if result.kvs else None, self.url).seq

    async def snapshot(self) -> Snapshot | None:
        self._check_open()
        for _ in range(10):
            with _mapped(self.url, "read the snapshot"):
                result = await self.client.range(self._snap_key)
            if not result.kvs:
                return None
            kv = result.kvs[0]
            where = f"{self.url} snapshot"
            try:
                doc = unpackb(kv.value)
                payload = await self._payload(doc, where, result.revision)
                return snapshot_from_wire(unpackb(payload), where=where)
            except _ChunksGone:
                continue  # replaced by a newer compaction while we read it
            except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError) as exc:
                raise CorruptLogError(f"{where}: not valid: {exc}") from None
        raise LogUnavailableError(f"route log {self.url}: snapshot kept changing while read")

    async def load_table(self, *, at: int | None = None) -> RouteTable:
        # one consistent pass would need the snapshot and the records at one revision; a
        # compaction in between shows as CompactedError, so retry the pair a few times
        for _ in range(5):
            base = await self.snapshot()
            table = base.table if base is not None else RouteTable()
            if at is not None and at < table.seq:
                raise CompactedError(
                    f"seq {at} is before the oldest snapshot (seq {table.seq}); "
                    "records before it were compacted away",
                    first_available=table.seq,
                )
            try:
                # the collector paused for the whole read, not per batch: re-enabling it after
                # each batch collected at once (measured: a fifth of a replay). Across awaits,
                # so other tasks run with it paused too: it only defers cyclic garbage.
                with paused_gc():
                    records = await self.read(table.seq + 1)
            except CompactedError:
                continue
            if at is not None:
                records = [r for r in records if r.seq <= at]
            with paused_gc():
                return fold_all(table, records)
        raise LogUnavailableError(f"route log {self.url}: compactions kept racing with a load")

    def accept_reset(self) -> None:
        self.identity = _Identity()

    def watch(self, from_seq: int = 1) -> AsyncIterator[Record]:
        watcher = _EtcdWatch(self, max(from_seq, 1))
        self._scopes.add(watcher)
        return watcher

    def nudge(self, seq: int) -> None:
        """Somebody waits for ``seq`` (a node's ``/health?min_seq``, a hub confirming a change):
        every watcher that has not got it tries now instead of at the end of its back-off, and
        one whose stream has not brought it within ``RECHECK_AFTER`` seconds reads the keys
        again. So a follower recovers the moment etcd is back and a change is waited for, and
        a stream that fell silent (a member cut off from the others) delays a change by
        seconds, not for as long as nothing else breaks it. Each call costs at most one extra
        read per watcher."""
        for watcher in list(self._scopes):
            watcher.nudge(seq)

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self,
        events: Sequence[Event],
        *,
        actor: str = "eventproxy",
        expected_head: int | None = None,
    ) -> list[int]:
        self._check_open()
        if self.readonly:
            raise LogError(f"route log {self.url} was opened read-only")
        events = list(events)
        if not events:
            return []
        head = self._known_head
        if head is not None and expected_head is not None and expected_head != head.seq:
            head = None  # what we saw last is not what the caller expects: ask etcd
        for _ in range(_MAX_ATTEMPTS):
            self._check_open()
            if head is None:
                head = await self._read_head()
            if expected_head is not None and expected_head != head.seq:
                raise AppendConflictError(
                    f"{self.url}: expected head {expected_head}, but the log is at {head.seq}"
                )
            ts = now_utc()
            records = [
                Record(seq=head.seq + 1 + i, ts=ts, actor=actor, event=event)
                for i, event in enumerate(events)
            ]
            current = await self._commit(head, records)
            if current is None:
                self._last_appended = records
                return [r.seq for r in records]
            if expected_head is not None and current.seq != expected_head:
                raise AppendConflictError(
                    f"{self.url}: expected head {expected_head}, but another writer appended first"
                )
            head = current  # (at the expected seq still: only fenced after a lost answer)
        raise AppendConflictError(
            f"{self.url}: gave up appending after {_MAX_ATTEMPTS} conflicts with other writers"
        )

    def appended(self, seqs: Sequence[int]) -> list[Record] | None:
        records = self._last_appended
        if records and [r.seq for r in records] == list(seqs):
            return list(records)
        return None

    async def _read_head(self) -> _Head:
        """The head as etcd has it now, checked against what this reader has seen."""
        before = self.identity.copy()
        with _mapped(self.url, "append: read the head"):
            result = await self.client.range(self._head_key)
        head = _Head.decode(result.kvs[0] if result.kvs else None, self.url)
        before.check(self.url, result.cluster_id, result.revision, head)
        self.identity.merge(before)
        self._known_head = head
        return head

    async def _commit(self, head: _Head, records: list[Record]) -> _Head | None:
        """One attempt on ``head``: None once the batch is in the log; else the head another
        writer left (the txn's failure branch reads it), checked against what we have seen."""
        first, last = records[0].seq, records[-1].seq
        with paused_gc():  # refused whole (InvalidRouteDataError) before anything is stored
            payload = encode_or_refuse(lambda: packb([record_to_wire(r) for r in records]), records)
        self._known_head = None  # until this attempt's outcome is known
        chunks = await self._stage(self._chunks, last, payload)
        doc: dict[str, Any] = {"first": first}
        if chunks is None:
            doc["data"] = payload
        else:
            doc["chunks"] = chunks
        value = packb(doc)
        log_id = head.log_id or uuid.uuid4().hex
        head_value = packb({"seq": last, "log": log_id})
        batch_key = self._batch_key(last)
        ops = [put_op(batch_key, value), put_op(self._head_key, head_value)]
        compare = [compare_mod_revision(self._head_key, head.mod_revision)]
        if head.mod_revision:  # and the very bytes we saw: a foreign head never matches
            compare.append(compare_value(self._head_key, head.value))
        before = self.identity.copy()
        try:
            with _mapped(self.url, f"append seqs {first}..{last}"):
                try:
                    result = await self.client.txn(compare, ops, [range_op(self._head_key)])
                except EtcdOutcomeUnknownError:
                    settled = await self._settle(head, batch_key, value)
                    if settled is None:
                        raise
                    if not isinstance(settled, tuple):
                        return None  # landed (its head's revision unknown: read next time)
                    await self._unstage(chunks)
                    current, cluster_id, revision = settled
                    before.check(self.url, cluster_id, revision, current)
                    self.identity.merge(before)
                    self._known_head = current
                    return current  # not in the log, and never will be: renumber
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._unstage(chunks)
            raise
        if not result.succeeded:
            await self._unstage(chunks)
            kvs = result.range_kvs(0)
            current = _Head.decode(kvs[0] if kvs else None, self.url)
            before.check(self.url, result.cluster_id, result.revision, current)
            self.identity.merge(before)
            self._known_head = current
            return current
        written = _Head(last, log_id, result.revision, head_value)
        before.check(self.url, result.cluster_id, result.revision, written)
        self.identity.merge(before)
        self._known_head = written
        return None

    async def _settle(
        self, head: _Head, key: bytes, value: bytes
    ) -> Literal[True] | tuple[_Head, str, int] | None:
        """After a commit's answer was lost (say its member died): did the batch land?

        A txn still queued in the cluster could apply later, so "not there yet" proves nothing.
        Instead the head is *fenced*: one txn rewrites it unchanged if it is still ``head``
        (which moves its ``mod_revision``, so the lost txn's compare can never hold), and else
        reads the batch key. Returns True (it landed), ``(head, cluster id, revision)`` to
        renumber on (it did not land, and never will), or None (etcd did not settle it within
        half the client's timeout, e.g. it has no quorum: still unknown, and the caller says
        so; the whole append thus fails within 1.5 timeouts)."""
        if not head.mod_revision:  # an empty log has no head to fence
            return True if await self._landed(key, value) else None
        deadline = anyio.current_time() + self.client.options.timeout / 2
        delay = 0.05
        while (left := deadline - anyio.current_time()) > 0:
            try:
                fence = await self.client.txn(
                    [
                        compare_mod_revision(self._head_key, head.mod_revision),
                        compare_value(self._head_key, head.value),
                    ],
                    [put_op(self._head_key, head.value)],
                    [range_op(key)],
                    patience=left,
                )
                if fence.succeeded:  # still the old head, now fenced
                    fenced = _Head(head.seq, head.log_id, fence.revision, head.value)
                    return fenced, fence.cluster_id, fence.revision
                kvs = fence.range_kvs(0)
                if kvs and kvs[0].value == value:
                    return True
                # the head moved without our batch: another writer's won, and ours (comparing
                # the old head) can never apply; renumber on the head as it is now
                current = await self.client.range(self._head_key)
            except EtcdError:
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            now = _Head.decode(current.kvs[0] if current.kvs else None, self.url)
            return now, current.cluster_id, current.revision
        return None

    async def _landed(self, key: bytes, value: bytes) -> bool:
        """After a lost answer: is ``value`` at ``key``? (Asked of any member that answers.)"""
        for _ in range(3):
            try:
                result = await self.client.range(key)
            except EtcdError:
                await anyio.sleep(0.2)
                continue
            return bool(result.kvs) and result.kvs[0].value == value
        return False

    async def compact(
        self, *, retention: timedelta, now: datetime | None = None
    ) -> CompactionResult:
        self._check_open()
        if self.readonly:
            raise LogError(f"route log {self.url} was opened read-only")
        if retention < timedelta(0):
            raise ValueError(f"retention must not be negative, got {retention}")
        cutoff = (now or now_utc()) - retention
        for _ in range(_MAX_ATTEMPTS):
            with _mapped(self.url, "compact: read the head"):
                result = await self.client.txn(
                    [], [range_op(self._head_key), range_op(self._snap_key)]
                )
            head_kvs, snap_kvs = result.range_kvs(0), result.range_kvs(1)
            head = _Head.decode(head_kvs[0] if head_kvs else None, self.url)
            snap_rev = snap_kvs[0].mod_revision if snap_kvs else 0
            base = await self.snapshot()
            table = base.table if base is not None else RouteTable()
            try:
                records = await self.read(table.seq + 1)
            except CompactedError:
                continue
            records = [r for r in records if r.seq <= head.seq]
            old = 0
            while old < len(records) and records[old].ts <= cutoff:
                old += 1
            if old == 0:
                return CompactionResult(table.seq, 0, len(records))
            with paused_gc():
                folded = fold_all(table, records[:old])
            snapshot = Snapshot(ts=now_utc(), table=folded)
            seq = folded.seq
            payload = packb(snapshot_to_wire(snapshot))
            chunks = await self._stage(self._snap_chunks, seq, payload)
            doc: dict[str, Any] = {"seq": seq}
            if chunks is None:
                doc["data"] = payload
            else:
                doc["chunks"] = chunks
            ops = [
                put_op(self._snap_key, packb(doc)),
                delete_op(self._batches, self._batch_key(seq + 1)),
                delete_op(self._chunks, self._chunks + (_SEQ % (seq + 1)).encode()),
                delete_op(self._snap_chunks, self._snap_chunks + (_SEQ % seq).encode()),
            ]
            compare = [
                compare_mod_revision(self._head_key, head.mod_revision),
                compare_mod_revision(self._snap_key, snap_rev),
            ]
            try:
                with _mapped(self.url, f"compact up to seq {seq}"):
                    done = await self.client.txn(compare, ops)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._unstage(chunks)
                raise
            if done.succeeded:
                return CompactionResult(seq, old, len(records) - old)
            await self._unstage(chunks)
        raise AppendConflictError(
            f"{self.url}: gave up compacting after {_MAX_ATTEMPTS} conflicts with other writers"
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for watcher in list(self._scopes):
            watcher.stop()
        with anyio.CancelScope(shield=True):
            for stream in list(self._streams):
                await stream.__aexit__(None, None, None)
            self._streams.clear()
        await self.client.aclose()


class _ChunksGone(Exception):
    """Internal: a chunked batch or snapshot was compacted away while being read."""


class _EtcdWatch(AsyncIterator[Record]):
    """``watch(from_seq)``: read the keys, then follow an etcd watch; see the module doc."""

    def __init__(self, log: EtcdRouteLog, cursor: int) -> None:
        self._log = log
        self._cursor = cursor
        self._buffer: list[Record] = []
        self._stream: EtcdWatch | None = None  # the open etcd watch stream
        self._revision = 0
        self._scope: anyio.CancelScope | None = None
        self._stopped = False
        self._failures = 0
        self._connected: bool | None = None
        self._wake: anyio.Event | None = None  # set by nudge(): cut a back-off short
        self._read: anyio.CancelScope | None = None  # the stream read under way
        self._rechecking = False  # a nudge already set the read's deadline

    def nudge(self, seq: int) -> None:
        """See :meth:`EtcdRouteLog.nudge`."""
        if seq < self._cursor + len(self._buffer):
            return  # got it already
        if self._wake is not None:
            self._wake.set()
        read = self._read
        if read is not None and not self._rechecking:
            self._rechecking = True
            read.deadline = min(read.deadline, anyio.current_time() + RECHECK_AFTER)

    def stop(self) -> None:
        self._stopped = True
        if self._scope is not None:
            self._scope.cancel()

    def __aiter__(self) -> _EtcdWatch:
        return self

    def _report(self, connected: bool, reason: str) -> None:
        if connected == self._connected:
            return
        self._connected = connected
        callback = self._log.on_connection
        if callback is not None:
            callback(connected, reason)

    async def _close_stream(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            self._log._streams.discard(stream)
            with anyio.CancelScope(shield=True):
                await stream.__aexit__(None, None, None)

    async def __anext__(self) -> Record:
        try:
            while not self._buffer:
                if self._stopped or self._log._closed:
                    raise StopAsyncIteration
                with anyio.CancelScope() as scope:
                    self._scope = scope
                    await self._step()
                self._scope = None
                if scope.cancelled_caught:
                    raise StopAsyncIteration
        except BaseException:
            await self._close_stream()
            raise
        record = self._buffer.pop()
        self._cursor = record.seq + 1
        return record

    async def _step(self) -> None:
        log = self._log
        if self._stream is None:
            try:
                await self._catch_up()
            except (LogUnavailableError, EtcdCompactedError) as exc:
                await self._failed(exc)
            return
        try:
            batch = await self._next_batch(self._stream)
        except EtcdCompactedError:
            logger.info(
                "%s: the watch revision %d was compacted by etcd; reading the keys from seq %d",
                log.url,
                self._revision + 1,
                self._cursor,
            )
            await self._close_stream()
            return
        except EtcdError as exc:
            await self._close_stream()
            if not (self._stopped or log._closed):
                await self._failed(exc)
            return
        if batch is None:
            logger.info(
                "%s: seq %d was asked for and the watch on %s has not brought it for %.1fs; "
                "reading the keys",
                log.url,
                self._cursor,
                self._stream.endpoint,
                RECHECK_AFTER,
            )
            await self._close_stream()
            return
        found: list[Record] = []
        for event in batch.events:
            key = event.kv.key
            if key == log._head_key:
                if event.type == "DELETE":
                    log.identity.check_event(log.url, None, batch.revision)
                else:
                    head = _Head.decode(event.kv, log.url)
                    log.identity.check_event(log.url, head, event.kv.mod_revision)
            elif key.startswith(log._batches) and event.type == "PUT":
                try:
                    records = await log._decode_batch(event.kv, event.kv.mod_revision)
                except (_ChunksGone, LogUnavailableError, EtcdCompactedError):
                    await self._close_stream()  # read it back by keys
                    return
                found.extend(r for r in records if r.seq >= self._cursor + len(found))
        self._revision = max(self._revision, batch.revision)
        if found and found[0].seq != self._cursor:
            await self._close_stream()  # not contiguous (should not happen): read by keys
            return
        found.reverse()
        self._buffer = found

    async def _next_batch(self, stream: EtcdWatch) -> WatchBatch | None:
        """The stream's next batch; None if a nudge's deadline came first (see nudge)."""
        try:
            with anyio.CancelScope() as self._read:
                return await stream.__anext__()
        finally:
            self._read = None
            self._rechecking = False
        return None

    async def _catch_up(self) -> None:
        log = self._log
        before = log.identity.copy()
        records, view = await log._collect(self._cursor, None)
        before.check(log.url, view.cluster_id, view.revision, view.head)
        log.identity.merge(before)
        self._revision = max(view.revision, self._revision)
        records.reverse()
        self._buffer = records
        watch = log.client.watch(
            log.prefix, prefix_end(log.prefix), start_revision=view.revision + 1
        )
        with _mapped(log.url, "watch"):
            self._stream = await watch.__aenter__()
        log._streams.add(self._stream)
        if self._failures:
            logger.warning(
                "%s: etcd reachable again (%s); following from seq %d",
                log.url,
                self._stream.endpoint,
                self._cursor,
            )
        self._failures = 0
        self._report(True, f"watching {self._stream.endpoint}")

    async def _failed(self, exc: BaseException) -> None:
        self._failures += 1
        delay = back_off(self._failures)
        reason = str(exc)
        self._report(False, reason)
        level = (
            logging.WARNING if self._failures <= 3 or self._failures % 20 == 0 else logging.DEBUG
        )
        logger.log(
            level,
            "%s: cannot follow etcd (attempt %d): %s; retrying in %.2fs",
            self._log.url,
            self._failures,
            reason,
            delay,
        )
        self._wake = wake = anyio.Event()
        try:
            with anyio.move_on_after(delay):
                await wake.wait()  # or at once, when a reader asks for what it lacks
        finally:
            self._wake = None
