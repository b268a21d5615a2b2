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

This module knows nothing of files, locks or msgpack.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final

from .._errors import CorruptLogError

__all__ = ["FILE_MAGIC", "FRAME_HEADER_SIZE", "MAX_FRAME", "Frame", "Scan", "encode_frame", "scan"]

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
