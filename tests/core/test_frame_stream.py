"""FrameStream: the file log's frames read one at a time (a follower's reload streams the file
instead of holding its bytes). Pure: a BytesIO stands in for the file.

It must find what :func:`scan` finds, frame for frame, for every cut of a file (a torn last
frame ends it, like a clean end), hand out whole payloads only where asked, and refuse damage
in a frame it only checksums as firmly as in one it keeps.
"""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventproxy import CorruptLogError
from eventproxy.log._framing import (
    FILE_MAGIC,
    FRAME_HEADER_SIZE,
    Frame,
    FrameStream,
    encode_frame,
    scan,
)

payloads = st.lists(st.binary(min_size=0, max_size=3000), max_size=8)


def file_of(items: list[bytes]) -> bytes:
    return FILE_MAGIC + b"".join(encode_frame(p) for p in items)


def stream_all(data: bytes, keep: bool, prefix: int = 64) -> tuple[list[Frame], int]:
    f = io.BytesIO(data)
    f.seek(len(FILE_MAGIC))
    stream = FrameStream(f, len(FILE_MAGIC), prefix=prefix)
    frames = []
    while (start := stream.next_frame()) is not None:
        frame = stream.finish(start, keep=keep)
        if frame is None:
            break
        frames.append(frame)
    return frames, stream.offset


@given(items=payloads, data=st.data())
def test_every_cut_of_a_file_streams_as_it_scans(items: list[bytes], data: st.DataObject) -> None:
    whole = file_of(items)
    cut = data.draw(st.integers(len(FILE_MAGIC), len(whole)))
    expected = scan(whole[:cut], len(FILE_MAGIC))
    for keep in (True, False):
        frames, end = stream_all(whole[:cut], keep)
        assert end == expected.valid_end
        assert [f.offset for f in frames] == [f.offset for f in expected.frames]
        if keep:
            assert frames == expected.frames
        else:  # only the first bytes, checked over the whole payload
            assert [f.payload for f in frames] == [f.payload[:64] for f in expected.frames]


def test_a_kept_frame_is_whole_and_a_skipped_one_is_its_prefix() -> None:
    big, small = bytes(range(256)) * 200, b"tiny"
    data = file_of([big, small])
    f = io.BytesIO(data)
    f.seek(len(FILE_MAGIC))
    stream = FrameStream(f, len(FILE_MAGIC), prefix=100)
    start = stream.next_frame()
    assert start is not None
    assert (start.offset, start.length, start.prefix) == (len(FILE_MAGIC), len(big), big[:100])
    assert stream.finish(start, keep=False) == Frame(len(FILE_MAGIC), big[:100])
    second = stream.next_frame()
    assert second is not None
    assert second.offset == len(FILE_MAGIC) + FRAME_HEADER_SIZE + len(big)
    assert stream.finish(second, keep=True) == Frame(second.offset, small)
    assert stream.next_frame() is None
    assert stream.offset == len(data)


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_a_damaged_payload_is_refused_with_its_offset_kept_or_not(keep: bool, where: str) -> None:
    payload = b"x" * 50_000  # longer than the checksum buffer, so a skip reads it in chunks
    data = bytearray(file_of([b"first", payload]))
    offset = len(FILE_MAGIC) + FRAME_HEADER_SIZE + len(b"first")
    at = {"start": 0, "middle": 25_000, "end": len(payload) - 1}[where]
    data[offset + FRAME_HEADER_SIZE + at] ^= 0x01
    with pytest.raises(CorruptLogError, match=f"byte offset {offset} .*payload checksum") as e:
        stream_all(bytes(data), keep)
    assert e.value.offset == offset


def test_a_damaged_header_and_an_oversize_claim_are_refused() -> None:
    data = bytearray(file_of([b"first", b"second"]))
    data[len(FILE_MAGIC) + 1] ^= 0x40  # the first frame's length
    with pytest.raises(CorruptLogError, match="header at byte offset 16 fails its checksum"):
        stream_all(bytes(data), keep=True)
    import struct
    import zlib

    head = struct.pack(">II", (1 << 30) + 1, 0)
    oversize = FILE_MAGIC + head + struct.pack(">I", zlib.crc32(head))
    with pytest.raises(CorruptLogError, match="claims 1073741825 bytes"):
        stream_all(oversize, keep=False)
