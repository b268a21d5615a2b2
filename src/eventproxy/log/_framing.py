"""Framing of the file log: pure functions from bytes to frames and back.

Theory of operation
-------------------
A log file is a 16-byte file header (:data:`FILE_MAGIC`) followed by frames. A frame is a
12-byte header — payload length, CRC-32 of the payload, CRC-32 of those first 8 bytes — and the
payload. One frame holds one appended batch (or the snapshot a compaction wrote first), so a
batch is durable whole or not at all.

:func:`scan` walks frames and sorts what it finds into three outcomes:

* a clean end;
* a **torn tail**: the file ends inside a frame's header or payload, or with zero bytes only
  (space a crash left allocated). The frame was never acknowledged — ``append`` returns after
  fsync — so it is dropped; the writer truncates it with a warning;
* **corruption**: a header whose own CRC fails (with non-zero bytes after it) or a complete frame
  whose payload CRC fails. That is damage to acknowledged data, so it is refused with the byte
  offset; nothing is skipped.

:class:`FrameStream` reads frames one at a time from something with ``read`` and ``readinto``
(a file), for a reader that needs only some of them whole: it hands out each frame's first
bytes, and then either the whole payload or only the verdict of its checksum, computed over a
small reused buffer. So a reader can walk a file of any size without holding its bytes. It is
stricter than :func:`scan`: anything but a clean end or a torn last frame raises, and the
caller falls back to :func:`scan` over the whole file, which tells a torn tail of zeros from
damage.

This module knows nothing of paths, locks or msgpack.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, Protocol

from .._errors import CorruptLogError

__all__ = [
    "FILE_MAGIC",
    "FRAME_HEADER_SIZE",
    "MAX_FRAME",
    "Frame",
    "FrameStart",
    "FrameStream",
    "Scan",
    "encode_frame",
    "scan",
]

FILE_MAGIC: Final = b"EVENTPROXY-LOG\x00\x01"
_HEADER: Final = struct.Struct(">III")
FRAME_HEADER_SIZE: Final = _HEADER.size
MAX_FRAME: Final = 1 << 30


def encode_frame(payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    head = struct.pack(">II", len(payload), zlib.crc32(payload))
    return head + struct.pack(">I", zlib.crc32(head)) + payload


@dataclass(frozen=True, slots=True)
class Frame:
    offset: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Scan:
    frames: list[Frame]
    valid_end: int  # offset just after the last complete frame
    torn_bytes: int  # bytes after valid_end that belong to a torn tail (0: clean end)


def scan(buf: bytes | memoryview, start: int) -> Scan:
    """Frames in ``buf`` from ``start``; raises :class:`CorruptLogError` with the offset."""
    view = memoryview(buf)
    size = len(view)
    frames: list[Frame] = []
    pos = start
    while pos < size:
        remaining = size - pos
        if remaining < FRAME_HEADER_SIZE:
            return Scan(frames, pos, remaining)
        length, payload_crc, header_crc = _HEADER.unpack_from(view, pos)
        if zlib.crc32(view[pos : pos + 8]) != header_crc:
            if not any(view[pos:]):
                return Scan(frames, pos, remaining)
            raise CorruptLogError(
                f"frame header at byte offset {pos} fails its checksum", offset=pos
            )
        if length > MAX_FRAME:
            raise CorruptLogError(
                f"frame at byte offset {pos} claims {length} bytes (limit {MAX_FRAME})",
                offset=pos,
            )
        end = pos + FRAME_HEADER_SIZE + length
        if end > size:
            return Scan(frames, pos, remaining)
        payload = bytes(view[pos + FRAME_HEADER_SIZE : end])
        if zlib.crc32(payload) != payload_crc:
            raise CorruptLogError(
                f"frame at byte offset {pos} ({length} bytes) fails its payload checksum",
                offset=pos,
            )
        frames.append(Frame(pos, payload))
        pos = end
    return Scan(frames, pos, 0)


class Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def readinto(self, buffer: bytearray | memoryview, /) -> int | None: ...


@dataclass(frozen=True, slots=True)
class FrameStart:
    """A frame's header and its first bytes (the whole payload if it is that short)."""

    offset: int
    length: int
    payload_crc: int
    prefix: bytes


_CHUNK: Final = 16384  # the buffer a skipped payload's checksum is computed through


class FrameStream:
    """Frames from ``file``, positioned at byte ``offset``: call :meth:`next_frame`, then
    :meth:`finish` on what it returned, and so on. :attr:`offset` is the end of the last
    frame finished (the valid end so far)."""

    def __init__(self, file: Readable, offset: int, *, prefix: int = 512) -> None:
        self.file = file
        self.offset = offset
        self.prefix = prefix
        self._buffer: memoryview | None = None

    def next_frame(self) -> FrameStart | None:
        """The next frame's start; None at the end of the file or a torn last frame."""
        header = self.file.read(FRAME_HEADER_SIZE)
        if len(header) < FRAME_HEADER_SIZE:
            return None
        length, payload_crc, header_crc = _HEADER.unpack(header)
        if zlib.crc32(header[:8]) != header_crc:
            raise CorruptLogError(
                f"frame header at byte offset {self.offset} fails its checksum",
                offset=self.offset,
            )
        if length > MAX_FRAME:
            raise CorruptLogError(
                f"frame at byte offset {self.offset} claims {length} bytes (limit {MAX_FRAME})",
                offset=self.offset,
            )
        prefix = self.file.read(min(length, self.prefix))
        if len(prefix) < min(length, self.prefix):
            return None
        return FrameStart(self.offset, length, payload_crc, prefix)

    def finish(self, start: FrameStart, *, keep: bool) -> Frame | None:
        """Read the rest of ``start``'s payload and check it: the frame with its whole payload
        (``keep``) or with only its first bytes; None if the file ends inside it (torn)."""
        missing = start.length - len(start.prefix)
        if keep:
            rest = self.file.read(missing) if missing else b""
            if len(rest) < missing:
                return None
            payload = start.prefix + rest
            crc = zlib.crc32(payload)
        else:
            payload, crc = start.prefix, zlib.crc32(start.prefix)
            if self._buffer is None:
                self._buffer = memoryview(bytearray(_CHUNK))
            while missing:
                n = self.file.readinto(self._buffer[: min(missing, _CHUNK)])
                if not n:
                    return None
                crc = zlib.crc32(self._buffer[:n], crc)
                missing -= n
        if crc != start.payload_crc:
            raise CorruptLogError(
                f"frame at byte offset {start.offset} ({start.length} bytes) fails its payload "
                "checksum",
                offset=start.offset,
            )
        self.offset = start.offset + FRAME_HEADER_SIZE + start.length
        return Frame(start.offset, payload)
