"""Memory evidence for the soak: tracemalloc snapshots taken inside the process being measured.

When ``EVENTPROXY_SOAK_TRACEMALLOC`` names a directory, :func:`install` (called by the soak's
stand-in hub and by the node's launcher) starts :mod:`tracemalloc` and a daemon thread that
dumps a snapshot there every ``EVENTPROXY_SOAK_TRACEMALLOC_EVERY`` seconds (default 30), named
``<tag>-<pid>-<n>.snap``. ``python -m bench._tracemem FIRST LAST`` prints what grew between two
snapshots, by the allocating line and by traceback. Off by default: tracing slows the process
down, so the committed soak numbers are taken without it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path

ENV = "EVENTPROXY_SOAK_TRACEMALLOC"


def install(tag: str) -> None:
    where = os.environ.get(ENV)
    if not where:
        return
    directory = Path(where)
    directory.mkdir(parents=True, exist_ok=True)
    every = float(os.environ.get(f"{ENV}_EVERY", "30"))
    if os.environ.get(f"{ENV}_MODE", "snapshots") == "counts":
        _counts(directory / f"{tag}-{os.getpid()}.jsonl", every)
        return
    tracemalloc.start(int(os.environ.get(f"{ENV}_FRAMES", "12")))

    def dump() -> None:
        n = 0
        while True:
            time.sleep(every)
            snap = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            snap.dump(str(directory / f"{tag}-{os.getpid()}-{n:03d}.snap"))
            n += 1

    threading.Thread(target=dump, name="tracemem", daemon=True).start()


_WATCHED = (
    "_SelectorSocketTransport",
    "_StreamProtocol",
    "FastStream",
    "BackendConnection",
    "Task",
    "Future",
    "coroutine",
    "TimerHandle",
    "Handle",
    "Record",
    "RouteEntry",
    "Route",
    "ServiceSpec",
    "RouterSpec",
    "_Node",
    "Response",
    "Request",
    "socket",
    "frame",
    "traceback",
)


def _mallinfo() -> dict[str, int]:
    """glibc's heap (``mallinfo2``): bytes in use and free inside what malloc holds, so RSS
    that grows while ``in_use`` does not is fragmentation or a high-water mark, not objects."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                "uordblks", "fordblks", "keepcost",
            )
        ]  # fmt: skip

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {
        "heap_kb": (info.arena + info.hblkhd) // 1024,
        "in_use_kb": (info.uordblks + info.hblkhd) // 1024,
        "free_kb": info.fordblks // 1024,
    }


def _counts(path: Path, every: float) -> None:
    """Cheap evidence (no tracing): RSS, pymalloc blocks, glibc's heap, gc objects by type (the
    top 40 and a fixed list), and what the collector did since the last sample, every ``every``
    seconds."""
    import collections
    import gc
    import json

    collections_done: collections.Counter[str] = collections.Counter()

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "stop":
            gen = info["generation"]
            collections_done[f"gen{gen}"] += 1
            collections_done[f"gen{gen}_collected"] += info["collected"]

    gc.callbacks.append(on_gc)

    def rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def loop() -> None:
        while True:
            time.sleep(every)
            types = collections.Counter(type(o).__name__ for o in gc.get_objects())
            done = dict(collections_done)
            collections_done.clear()
            doc = {
                "t": time.time(),
                "rss_kb": rss_kb(),
                "blocks": sys.getallocatedblocks(),
                **_mallinfo(),
                "objects": sum(types.values()),
                "gc": done,
                "watched": {name: types.get(name, 0) for name in _WATCHED},
                "types": dict(types.most_common(40)),
            }
            with path.open("a") as f:
                f.write(json.dumps(doc) + "\n")

    threading.Thread(target=loop, name="tracemem", daemon=True).start()


def diff(first: Path, last: Path, top: int = 25) -> str:
    a = tracemalloc.Snapshot.load(str(first))
    b = tracemalloc.Snapshot.load(str(last))
    lines = [f"{first.name} -> {last.name}"]
    total_a = sum(s.size for s in a.statistics("filename"))
    total_b = sum(s.size for s in b.statistics("filename"))
    lines.append(f"traced total: {total_a / 2**20:.2f} MB -> {total_b / 2**20:.2f} MB")
    lines.append("-- by line --")
    for stat in b.compare_to(a, "lineno")[:top]:
        lines.append(str(stat))
    lines.append("-- by traceback (top 6) --")
    for stat in b.compare_to(a, "traceback")[:6]:
        lines.append(f"{stat.size_diff / 1024:+.1f} KiB, {stat.count_diff:+d} blocks")
        lines.extend("    " + x for x in stat.traceback.format()[-12:])
    return "\n".join(lines)


if __name__ == "__main__":
    print(diff(Path(sys.argv[1]), Path(sys.argv[2])))
