"""``file:///path/to/routes.log``: an append-only, fsync'd route log in one local file.

Theory of operation
-------------------
The file is the 16-byte header plus frames (see :mod:`._framing`): at most one snapshot frame
first (after a compaction), then the records it kept in frames of at most ``_FRAME_RECORDS``,
then one frame per appended batch. The whole log is also kept in
memory (it is the routing table's history; compaction bounds it).

* **One writer.** A writer holds an exclusive ``flock`` on ``<path>.lock`` (which records its
  PID) for as long as it is open; a second writer fails at once with :class:`LogLockedError`
  naming the holder. Readers (``readonly=True``, e.g. the CLI) take no lock and never modify
  the file.
* **Durability.** ``append`` writes one frame and fsyncs the file before it returns; a new file
  and a compacted file are written under a temporary name, fsync'd, renamed into place, and the
  directory is fsync'd.
* **Recovery.** A writer that opens a file ending in a torn frame (a crash during an append
  that therefore never returned) truncates it and logs a warning with the byte count. Damage
  anywhere else is refused with :class:`CorruptLogError` and the byte offset: an operator
  decides, eventproxy never guesses.
* **No half-applied appends.** If a write or fsync fails, the file is truncated back to its
  previous length before the error is raised; if even that fails, the log refuses further
  appends until it is reopened (and recovered).
* **Broken, not silently wrong.** If a compaction renamed the new file into place but the log
  cannot open it (``EMFILE``...), the descriptor it holds names the unlinked old file, where an
  append would be acknowledged and then lost: the log refuses every further append and
  compaction (reads still work: memory holds the same records) until it is reopened.
* **Errors.** Every ``OSError`` becomes :class:`LogUnavailableError` through one helper,
  :func:`~eventproxy.log._base.map_os_errors`, naming the path and the operation.

All blocking file-system calls (``aclose`` included) run in a worker thread
(``anyio.to_thread``), so the event loop never waits on the disk.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import io
import logging
import os
import threading
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import msgpack

from .._errors import (
    CorruptLogError,
    LogClosedError,
    LogError,
    LogLockedError,
    LogUnavailableError,
)
from .._gc import paused_gc
from ..events import Record, pack_map_streaming, record_to_wire, records_from_wire, unpackb
from ..snapshot import Snapshot, pack_snapshot, snapshot_from_wire
from ._base import LocalRouteLog, encode_or_refuse, map_os_errors
from ._framing import (
    FILE_MAGIC,
    FRAME_HEADER_SIZE,
    Frame,
    FrameStart,
    FrameStream,
    encode_frame,
    scan,
)

__all__ = ["FileRouteLog"]

log = logging.getLogger("eventproxy.log")

# Records per frame when compaction rewrites the tail. Small, because a follower decodes every
# frame that holds a record it lacks, whole: the append that crosses the threshold compacts
# before any follower has looked, so a follower is nearly always a record or a few behind and
# one big frame meant decoding the whole tail (1,000 records, about 1 MB of short-lived objects
# beside the live table) at every compaction; the node's RSS rose a step at each of them.
_FRAME_RECORDS = 64


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


_SPAN_BYTES = 512  # what _frame_span reads of a frame: its first keys are a few dozen bytes


def _frame_span(payload: bytes) -> tuple[str, int, int] | None:
    """What a frame holds, read from its first bytes without decoding the rest: ``("snapshot",
    seq, 0)`` or ``("batch", first seq, number of records)``; None for anything else (the
    caller then decodes the frame whole, which names what is wrong)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=True, max_buffer_size=_SPAN_BYTES)
    unpacker.feed(payload[:_SPAN_BYTES])  # (not the whole frame: the unpacker copies it)
    try:
        fields = unpacker.read_map_header()
        found: dict[str, object] = {}
        for _ in range(fields):
            key = unpacker.unpack()
            if key == "routes":  # a snapshot's keys come first: v, type, seq, ts, routes
                break
            if key == "records":
                count = unpacker.read_array_header()
                if not count:
                    return None
                for _ in range(unpacker.read_map_header()):  # the first record: v, seq, ...
                    if unpacker.unpack() == "seq":
                        found["first"] = unpacker.unpack()
                        break
                    unpacker.skip()
                found["count"] = count
                break
            found[str(key)] = unpacker.unpack()
    except (ValueError, msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError):
        return None
    kind, seq = found.get("type"), found.get("seq", found.get("first"))
    if type(seq) is not int:
        return None
    if kind == "snapshot":
        return ("snapshot", seq, 0)
    count = found.get("count")
    if kind == "batch" and type(count) is int:
        return ("batch", seq, count)
    return None


class _HeldFile:
    """A follower's open descriptor (a duplicate) of a file it read, closed by :meth:`close`
    or when the last reference goes: the log's hold, and a lazy snapshot's, share one."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = os.dup(fd)

    def read(self, frame: FrameStart, path: Path) -> bytes:
        """The payload of ``frame`` (a frame of this file, checked when it was read), again."""
        if self.fd < 0:
            raise LogClosedError(f"route log {path} is closed")
        with map_os_errors(path, "read the snapshot"):
            payload = os.pread(self.fd, frame.length, frame.offset + FRAME_HEADER_SIZE)
        if len(payload) != frame.length or zlib.crc32(payload) != frame.payload_crc:
            raise CorruptLogError(
                f"{path} at byte offset {frame.offset}: the snapshot frame changed after it "
                "was read",
                offset=frame.offset,
            )
        return payload

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


def _batch_payload(records: Sequence[Record]) -> bytes:
    """``packb({"type": "batch", "records": [...]})``, one record's wire form at a time."""
    return pack_map_streaming(
        (("type", "batch"),), "records", (record_to_wire(r) for r in records), len(records)
    )


class FileRouteLog(LocalRouteLog):
    """A route log in a local file. Use :meth:`open`."""

    def __init__(
        self,
        path: Path,
        *,
        readonly: bool,
        fsync: bool,
        poll_interval: float,
        auto_compact: int | None = None,
    ) -> None:
        super().__init__(f"file://{path}", auto_compact=None if readonly else auto_compact)
        self.path = path
        self.readonly = readonly
        self._fsync = fsync
        self._write: tuple[threading.Event, list[bool]] | None = None  # the last batch's write
        self._compacting: threading.Event | None = None  # set when the last compaction's ended
        self.poll_interval = poll_interval
        self._fd: int | None = None
        # read-only: the file last read, held open so that its inode number cannot be given to
        # a later file (a follower tells a replaced file by its inode; one that missed two
        # compactions could otherwise find the number it knows on another file), and so that
        # a snapshot left encoded in it can be read when asked for
        self._held: _HeldFile | None = None
        self._lock_fd: int | None = None
        self._size = 0  # bytes of complete frames (incl. the file header)
        self._inode: int | None = None
        self._broken: str | None = None

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        fsync: bool = True,
        poll_interval: float = 0.1,
        auto_compact: int | None = None,
    ) -> FileRouteLog:
        """Open (a writer creates the file if needed), recover a torn tail, load the records.

        ``auto_compact``: see :class:`~eventproxy.log.LocalRouteLog` (a writer only; None: off).
        """
        absolute = Path(os.path.abspath(path))  # noqa: ASYNC240 - no I/O, only getcwd()
        self = cls(
            absolute,
            readonly=readonly,
            fsync=fsync,
            poll_interval=poll_interval,
            auto_compact=auto_compact,
        )
        await anyio.to_thread.run_sync(self._open_sync)
        return self

    # -- opening and loading ---------------------------------------------------------------

    def _open_sync(self) -> None:
        with map_os_errors(self.path, "open"):
            if self.readonly:
                if not self.path.exists():
                    raise LogUnavailableError(f"route log {self.path} does not exist")
                self._load_sync(recover=False)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock_sync()
            try:
                if not self.path.exists():
                    self._create_sync()
                self._load_sync(recover=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except BaseException:
                self._release_sync()
                raise

    def _take_lock_sync(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise LogLockedError(
                    f"route log {self.path} is already open for writing by another writer "
                    f"(pid {holder}, lock file {lock_path}); only one writer at a time — stop "
                    "it, or open the log read-only"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _create_sync(self) -> None:
        self._replace_file_sync(FILE_MAGIC)

    def _replace_file_sync(self, data: bytes) -> None:
        """Make ``data`` the whole log file atomically: a temporary file, fsync'd, renamed into
        place, and the directory fsync'd. On failure the old file is untouched."""
        tmp = self.path.with_name(self.path.name + ".new")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if self._fsync:
            _fsync_dir(self.path.parent)

    def _read_sync(self) -> tuple[os.stat_result, bytes]:
        """The file's stat and bytes, from one open (held, read-only: see _held)."""
        with open(self.path, "rb") as f:
            stat = os.fstat(f.fileno())
            data = f.read()
            if self.readonly:
                self._hold_sync(_HeldFile(f.fileno()))
        return stat, data

    def _load_sync(
        self, *, recover: bool, read: tuple[os.stat_result, bytes] | None = None
    ) -> None:
        """Load the whole file (``read``: its stat and bytes, if the caller has them)."""
        stat, data = read or self._read_sync()
        if len(data) < len(FILE_MAGIC) or not data.startswith(FILE_MAGIC):
            raise CorruptLogError(
                f"{self.path} is not an eventproxy route log (bad file header at byte offset 0)",
                offset=0,
            )
        result = scan(data, len(FILE_MAGIC))
        with paused_gc():
            snapshot, records = self._decode_frames(result.frames, None)
        if result.torn_bytes:
            if recover:
                log.warning(
                    "route log %s: dropping a torn tail of %d bytes at byte offset %d (an "
                    "append interrupted by a crash, never acknowledged); %d records kept",
                    self.path,
                    result.torn_bytes,
                    result.valid_end,
                    len(records),
                )
                with open(self.path, "r+b") as f:
                    f.truncate(result.valid_end)
                    if self._fsync:
                        os.fsync(f.fileno())
            else:
                log.debug(
                    "route log %s: ignoring %d bytes being written", self.path, result.torn_bytes
                )
        self._install(snapshot, records)
        self._size = result.valid_end
        self._inode = stat.st_ino

    def _decode_frames(
        self, frames: Iterable[Any], snapshot: Snapshot | None, head: int = 0
    ) -> tuple[Snapshot | None, list[Record]]:
        """Decode ``frames`` that follow ``snapshot`` and the records up to ``head``.

        Returns the (possibly new) snapshot and the new records only, so that a caller installs
        them all or nothing.
        """
        records: list[Record] = []
        first = head == 0 and snapshot is None
        head = head or (snapshot.seq if snapshot else 0)
        for frame in frames:
            where = f"{self.path} at byte offset {frame.offset}"
            try:
                wire = unpackb(frame.payload)
            except Exception as exc:
                raise CorruptLogError(
                    f"{where}: undecodable frame: {exc}", offset=frame.offset
                ) from exc
            kind = wire.get("type") if isinstance(wire, dict) else None
            if kind == "snapshot" and first:
                snapshot = self._with_offset(snapshot_from_wire, wire, where, frame.offset)
                head = snapshot.seq
            elif kind == "batch":
                batch = self._with_offset(
                    records_from_wire, wire.get("records"), where, frame.offset
                )
                for record in batch:
                    if record.seq != head + 1:
                        raise CorruptLogError(
                            f"{where}: sequence gap, expected seq {head + 1}, found {record.seq}",
                            offset=frame.offset,
                            seq=record.seq,
                        )
                    records.append(record)
                    head = record.seq
            else:
                raise CorruptLogError(
                    f"{where}: unexpected frame (type {kind!r})", offset=frame.offset
                )
            first = False
        return snapshot, records

    @staticmethod
    def _with_offset(decode: Any, wire: object, where: str, offset: int) -> Any:
        try:
            return decode(wire, where=where)
        except CorruptLogError as exc:
            if exc.offset is None:
                exc.offset = offset
            raise

    # -- read-only refresh -----------------------------------------------------------------

    async def _refresh(self) -> None:
        if not self.readonly or self._closed:
            return
        await anyio.to_thread.run_sync(self._refresh_sync)

    def _refresh_sync(self) -> None:
        with map_os_errors(self.path, "refresh (reading what the writer appended)"):
            self._refresh_inner_sync()

    def _refresh_inner_sync(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return  # being replaced by a compaction; the next look will find it
        if stat.st_ino != self._inode or stat.st_size < self._size:
            try:
                f = open(self.path, "rb")  # noqa: SIM115 - the with below closes it
            except FileNotFoundError:
                return  # (as above)
            with f:
                stat = os.fstat(f.fileno())
                held = _HeldFile(f.fileno())
                if not self._reload_compacted_sync(f, stat, held):
                    f.seek(0)
                    self._load_sync(recover=False, read=(stat, f.read()))
                self._hold_sync(held)
            return
        if stat.st_size == self._size:
            return
        with open(self.path, "rb") as f:
            f.seek(self._size)
            data = f.read()
        result = scan(data, 0)
        frames = [type(fr)(fr.offset + self._size, fr.payload) for fr in result.frames]
        base = None if self._head else self._snapshot  # (past the snapshot: not needed)
        snapshot, tail = self._decode_frames(frames, base, self._head)
        if snapshot is not base:
            self._install(snapshot, [*self._records, *tail])
        else:  # the usual case: new records after the ones we have (no copy of those);
            # seqs first, so a reader on the loop never finds a record its bisect can't place
            self._seqs.extend(r.seq for r in tail)
            self._records.extend(tail)
        self._size += result.valid_end

    def _reload_compacted_sync(
        self, f: io.BufferedReader, stat: os.stat_result, held: _HeldFile
    ) -> bool:
        """A follower's look at a file a compaction replaced, reusing what it holds: the new
        file is the snapshot at some seq S and the records after S, which this follower has
        up to its head already. So it keeps its records after S, decodes only the frames past
        its head, and leaves the snapshot in the file (``held`` open) until somebody asks for
        it (a follower past it never does). It streams the file (:class:`FrameStream`): of a
        frame it already holds it reads only the first bytes and the checksum, so a reload
        allocates little more than the new records, whatever the file's size. (Decoding the
        whole file while the old state was alive doubled the follower's memory at every
        compaction; reading it whole into one buffer, in a worker thread, held the file's
        bytes and the snapshot's for a moment: traced peak 361 KB for a 154 KB file, 67 KB
        streamed.)

        Returns False (the caller loads the whole file, which names any damage) unless the
        file lines up exactly: S within what this follower holds, every frame contiguous from
        S + 1, up to at least its head."""
        if f.read(len(FILE_MAGIC)) != FILE_MAGIC:
            return False
        stream = FrameStream(f, len(FILE_MAGIC), prefix=_SPAN_BYTES)
        head = self._head
        try:
            start = stream.next_frame()
            first = _frame_span(start.prefix) if start is not None else None
            if start is None or first is None or first[0] != "snapshot":
                return False
            base = first[1]
            if not self._base_seq <= base <= head or base == 0:
                return False
            if stream.finish(start, keep=False) is None:
                return False
            snapshot_at = start
            expected, beyond, beyond_from = base + 1, [], 0
            while (start := stream.next_frame()) is not None:
                span = _frame_span(start.prefix)
                if span is None or span[0] != "batch" or span[1] != expected or span[2] < 1:
                    return False
                last = expected + span[2] - 1
                frame = stream.finish(start, keep=last > head)
                if frame is None:
                    break  # a torn last frame: being appended (the next look gets it)
                if last > head:
                    beyond.append(frame)  # holds records this follower does not have yet
                    beyond_from = beyond_from or expected
                expected = last + 1
            if expected - 1 < head:
                return False  # the file ends before what we have: not the same history
            tail: list[Record] = []
            if beyond:
                _, decoded = self._decode_frames(beyond, None, beyond_from - 1)
                tail = [r for r in decoded if r.seq > head]
        except CorruptLogError:
            return False
        kept = self._records[bisect.bisect_right(self._seqs, base) :]

        def decode_snapshot() -> Snapshot:
            payload = held.read(snapshot_at, self.path)
            snapshot, _ = self._decode_frames([Frame(snapshot_at.offset, payload)], None)
            assert snapshot is not None
            return snapshot

        self._install(None, [*kept, *tail], lazy=(base, decode_snapshot))
        self._size = stream.offset
        self._inode = stat.st_ino
        return True

    async def _wait_for_change(self, head: int) -> None:
        if not self.readonly:
            await super()._wait_for_change(head)
            return
        # Another process writes: look at the file again after a short interval.
        await anyio.sleep(self.poll_interval)

    # -- persistence -----------------------------------------------------------------------

    def _check_writable(self) -> int:
        if self.readonly:
            raise LogError(f"route log {self.path} is open read-only")
        if self._broken is not None:
            raise LogUnavailableError(
                f"route log {self.path} is broken and refuses appends and compactions "
                f"({self._broken}); nothing acknowledged was lost: reopen it to recover"
            )
        if self._fd is None:
            raise LogError(f"route log {self.path} has no open file")
        return self._fd

    async def _wait_for_compaction(self) -> None:
        """A compaction whose caller was cancelled (asyncio's own cancellation) still runs in
        its thread and swaps the descriptor: nothing may write before it has ended."""
        done = self._compacting
        if done is not None and not done.is_set():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(done.wait)

    async def _persist_batch(self, records: list[Record]) -> None:
        await self._wait_for_compaction()
        self._write = None  # a batch refused before its write never landed
        fd = self._check_writable()
        frame = encode_frame(encode_or_refuse(lambda: _batch_payload(records), records))
        done = threading.Event()
        outcome: list[bool] = []
        self._write = (done, outcome)

        def write() -> None:
            try:
                self._append_sync(fd, frame)
                outcome.append(True)
            finally:
                done.set()

        await anyio.to_thread.run_sync(write)

    async def _wait_for_write(self) -> bool:
        """Wait for the last batch's write thread (it outlives a cancelled caller); its outcome."""
        if self._write is None:
            return False
        done, outcome = self._write
        if not done.is_set():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(done.wait)
        return bool(outcome)

    async def _landed(self, records: list[Record]) -> bool:
        return await self._wait_for_write()

    def _append_sync(self, fd: int, frame: bytes) -> None:
        before = self._size
        try:
            _write_all(fd, frame)
            if self._fsync:
                os.fsync(fd)
        except OSError:
            operation = "append failed and was rolled back"
            try:
                os.ftruncate(fd, before)
                if self._fsync:
                    os.fsync(fd)
            except OSError as undo_exc:
                self._broken = f"an append failed and its rollback failed too: {undo_exc}"
                operation = "append failed and could not be rolled back; the log is broken"
            with map_os_errors(self.path, operation):
                raise
        self._size = before + len(frame)

    async def _persist_compaction(self, snapshot: Snapshot, records: list[Record]) -> None:
        await self._wait_for_compaction()
        self._check_writable()
        done = self._compacting = threading.Event()

        def compact() -> None:
            try:
                self._compact_sync(snapshot, records)
            finally:
                done.set()

        await anyio.to_thread.run_sync(compact)

    def _compact_sync(self, snapshot: Snapshot, records: list[Record]) -> None:
        parts = [FILE_MAGIC, encode_frame(pack_snapshot(snapshot))]
        for i in range(0, len(records), _FRAME_RECORDS):
            parts.append(encode_frame(_batch_payload(records[i : i + _FRAME_RECORDS])))
        data = b"".join(parts)
        with map_os_errors(self.path, "compaction failed, log unchanged"):
            self._replace_file_sync(data)
        # The compacted file is in place (same records, fewer bytes). Until it is open, the fd
        # we hold names the old, now unlinked inode: appending there would be acknowledged and
        # lost. So if it cannot be opened, the log is broken: it refuses writes until reopened.
        try:
            new_fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            try:
                inode = os.fstat(new_fd).st_ino
            except BaseException:
                os.close(new_fd)
                raise
        except OSError as exc:
            self._broken = f"the compacted file could not be reopened: {exc.strerror or exc}"
            self._close_fd_sync()
            with map_os_errors(
                self.path, "compaction written, but reopening it failed; the log is broken"
            ):
                raise
        old_fd, self._fd = self._fd, new_fd
        self._size = len(data)
        self._inode = inode
        if old_fd is not None:
            with map_os_errors(self.path, "closing the file replaced by compaction"):
                os.close(old_fd)

    def _hold_sync(self, held: _HeldFile) -> None:
        """Read-only: keep ``held``, the file just read, open; see _held. (The one it replaces
        is closed once nothing uses it: a lazy snapshot may still read from it.)"""
        self._held = held

    # -- closing ---------------------------------------------------------------------------

    def _close_fd_sync(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):  # nothing of ours is pending on it (fsync'd)
                os.close(fd)

    def _release_sync(self) -> None:
        self._close_fd_sync()
        held, self._held = self._held, None
        if held is not None:
            held.close()
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    async def aclose(self) -> None:
        if self._closed:
            return
        await super().aclose()
        # Wait for an append or compaction in a worker thread to finish with the descriptor
        # before closing it; the close itself runs in a thread too. Shielded: a cancelled
        # close must still release the writer lock.
        with anyio.CancelScope(shield=True):
            async with self._writer_lock():
                await self._wait_for_write()
                await self._wait_for_compaction()
                await anyio.to_thread.run_sync(self._release_sync)
