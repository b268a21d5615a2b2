"""A compaction encodes one route at a time (issue 13: the soak's RSS steps at compactions).

The soak's RSS rose in steps each time a log compacted: the writer built the whole wire form of
the snapshot and of the retained records (a list of N small lists or dicts) before encoding it,
a transient of about five times the file's size in small objects, a new peak for the allocator.
The streaming encoders write the same bytes (checked here against ``packb`` of the wire form)
while holding one item's wire objects at a time; the peak is bounded relative to the file.
"""

from __future__ import annotations

import os
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest

from eventproxy import RouteAdded, RouteRemoved, open_log
from eventproxy.events import Record, pack_map_streaming, packb, record_to_wire
from eventproxy.log import FileRouteLog
from eventproxy.log.file import _batch_payload
from eventproxy.snapshot import Snapshot, pack_snapshot, snapshot_to_wire
from eventproxy.table import RouteTable, fold_all

pytestmark = pytest.mark.anyio


def records() -> list[Record]:
    ts = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
    events = [
        RouteAdded("/user/ä/", "http://127.0.0.1:1", {"user": "ä", "n": [1, {"x": None}]}),
        RouteRemoved("/user/ä/"),
        RouteAdded("host.example/user/b/", "https://[::1]:8443", {}),
    ]
    return [Record(seq=i + 1, ts=ts, actor="test", event=e) for i, e in enumerate(events)]


def test_streaming_encoders_write_the_bytes_packb_writes() -> None:
    recs = records()
    for batch in (recs, recs[:1], []):
        wire = {"type": "batch", "records": [record_to_wire(r) for r in batch]}
        assert _batch_payload(batch) == packb(wire)
    table = fold_all(RouteTable(), recs)
    for snapshot in (
        Snapshot(ts=recs[0].ts, table=table),
        Snapshot(ts=recs[0].ts, table=RouteTable()),
    ):
        assert pack_snapshot(snapshot) == packb(snapshot_to_wire(snapshot))
    many = [[i, "x" * (i % 40)] for i in range(70000)]  # array headers of every width
    assert pack_map_streaming((("a", 1),), "items", iter(many), len(many)) == packb(
        {"a": 1, "items": many}
    )
    assert msgpack.unpackb(pack_map_streaming((), "e", [], 0)) == {"e": []}
    with pytest.raises(ValueError, match="2 items, 3 announced"):
        pack_map_streaming((), "e", [1, 2], 3)


async def test_compaction_peak_is_bounded_by_the_file_size(tmp_path: Path) -> None:
    """1,000 routes, then 1,000 restarts; compacting the first 1,000 records: the traced peak
    of writing the compacted file stays under 3x its size (it was 5.1x: 1,318 KB for 257 KB)."""
    log = await open_log(f"file://{tmp_path}/routes.log", auto_compact=None)
    try:
        assert isinstance(log, FileRouteLog)
        await log.append(
            [
                RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{20000 + i}", {"user": f"u{i}"})
                for i in range(1000)
            ]
        )
        for i in range(1000):
            await log.append(
                [
                    RouteRemoved(f"/user/u{i}/"),
                    RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{30000 + i}", {"user": f"u{i}"}),
                ]
            )
        held = log._records
        snapshot = Snapshot(ts=held[999].ts, table=fold_all(RouteTable(), held[:1000]))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            log._compact_sync(snapshot, held[1000:])
            peak = tracemalloc.get_traced_memory()[1] - before
        finally:
            tracemalloc.stop()
        size = os.path.getsize(log.path)
        assert size > 200_000
        assert peak < 3 * size, (peak, size)
    finally:
        await log.aclose()
    # and what was written reads back as the same log
    again = await open_log(f"file://{tmp_path}/routes.log", readonly=True)
    try:
        assert (await again.snapshot()) == snapshot
        assert [r.seq for r in await again.read(1001)] == list(range(1001, 3001))
    finally:
        await again.aclose()
