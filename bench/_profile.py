"""Sampling profile of a running Python process with py-spy, and a summary of where time goes.

``py-spy record --pid PID --format raw --function --nonblocking`` writes collapsed stacks
(``frame;frame;... COUNT``, each frame ``function (path:line)``). ``--nonblocking`` does not pause
the target while sampling, so the load run it watches is disturbed less (a few sampled stacks
may be torn). Idle samples (threads waiting in the event loop's poll) are excluded by py-spy by
default, so percentages are of the sampled *busy* time of the process.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench._support import ToolMissing

EMPTY_STACK = "(no stack: sample not unwound)"
FRAME = re.compile(r"^(?P<func>.*) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")
# Most specific first: the first hit in a frame's path names its package.
PACKAGES = [
    "eventproxy_dataplane",
    "h11",
    "wsproto",
    "httptools",
    "anyio",
    "trio",
    "uvloop",
    "asyncio",
    "selectors",
    "socket",
    "ssl",
    "tomllib",
]


# Function names (as ``short`` prints them) of the runners under every stack.
BOOTSTRAP = [
    r"^Runner\.run ", r"^run \(_eventloop\.py\)", r"^\w*Backend\.run ", r"^main \(cli\.py\)",
    r"^run \(uvloop", r"^run \(_run\.py\)", r"^_run_module_as_main", r"^_run_code",
]  # fmt: skip
# Where a proxy's time goes, by frame pattern (matched against ``function (path:line)``).
CATEGORIES = {
    "h11 (parse, validate, serialise)": r"\(h11/",
    "httptools (llhttp) and its adapter": r"\(httptools/|_parse_httptools\.py",
    "h11 adapter (parser interface)": r"_parse_h11\.py",
    "response framing (serialising heads and chunks, _wire.py)": r"_wire\.py",
    "wsproto": r"\(wsproto/",
    "socket send (byte stream .send: anyio, trio or asyncio-Protocol edge)": (
        r"^(SocketStream|FastStream)\.send"
    ),
    "socket receive (byte stream .receive, Protocol.data_received)": (
        r"^(SocketStream|FastStream)\.receive|\.data_received "
    ),
    "backend pool (acquire, connect, release)": r"^BackendPool\.|connect_tcp",
    "routing lookup": r"_routing\.py|RoutingTable",
    "timeouts / cancel scopes": r"CancelScope|fail_after|move_on_after",
    "headers (X-Forwarded, hop-by-hop)": r"_proxy_headers\.py",
    "activity recording": r"_activity\.py",
}


def py_spy() -> str:
    """The py-spy executable next to this python or on PATH (pip install py-spy)."""
    local = Path(sys.executable).parent / "py-spy"
    if local.exists():
        return str(local)
    found = shutil.which("py-spy")
    if found is None:
        raise ToolMissing("py-spy", "needed for the data-plane profile; pip install py-spy")
    return found


def start_recording(
    pid: int, out: Path, *, duration: float, rate: int = 250
) -> subprocess.Popen[str]:
    """Start ``py-spy record`` on ``pid`` for ``duration`` s; raw stacks go to ``out``."""
    argv = [
        py_spy(), "record", "--pid", str(pid), "--duration", str(max(1, round(duration))),
        "--rate", str(rate), "--format", "raw", "--function", "--nonblocking",
        "--output", str(out),
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def parse_collapsed(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """``frame;frame;... COUNT`` lines -> (frames root first, count)."""
    stacks: list[tuple[list[str], int]] = []
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\n")
        if not line.strip():
            continue
        stack, sep, count = line.rpartition(" ")
        if not sep or not count.isdigit():
            raise ValueError(f"collapsed-stack line {number} is malformed: {line[:200]!r}")
        # py-spy writes an empty stack (" 14") for samples it could not unwind.
        stacks.append((stack.split(";") if stack else [EMPTY_STACK], int(count)))
    return stacks


def package_of(frame: str) -> str:
    m = FRAME.match(frame)
    path = m.group("path") if m else frame
    parts = re.split(r"[/\\.]", path)
    for name in PACKAGES:
        if name in parts:
            return name
    if path.startswith("<frozen") or "python3" in path:
        return "stdlib"
    return "other"


def short(frame: str) -> str:
    """``func (some/long/path/module.py:12)`` -> ``func (module.py)``."""
    m = FRAME.match(frame)
    if not m:
        return frame
    return f"{m.group('func')} ({m.group('path').rsplit('/', 1)[-1]})"


def _is_bootstrap(frame: str) -> bool:
    """Frames that sit under everything (runpy, main, the loop's run): they say nothing."""
    name = short(frame)
    return (
        name.startswith("<module>")
        or "<frozen" in frame
        or any(re.search(p, name) for p in BOOTSTRAP)
    )


def summarize(stacks: list[tuple[list[str], int]], *, top: int = 20) -> dict[str, Any]:
    """Self time by package and function; inclusive time by function and category (% of samples).

    Categories are inclusive: a sample counts once in each category one of its frames matches,
    so they overlap (h11 called from a socket send would count in both) and need not sum to 100.
    """
    total = sum(count for _, count in stacks)
    if total == 0:
        return {"samples": 0}
    self_pkg: Counter[str] = Counter()
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    incl_pkg: Counter[str] = Counter()
    incl_cat: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        leaf = frames[-1]
        self_pkg[package_of(leaf)] += count
        self_fn[short(leaf)] += count
        for name in {short(f) for f in frames if not _is_bootstrap(f)}:
            incl_fn[name] += count
        for pkg in {package_of(f) for f in frames}:
            incl_pkg[pkg] += count
        for category, pattern in CATEGORIES.items():
            if any(re.search(pattern, f) for f in frames):
                incl_cat[category] += count

    def pct(counter: Counter[str], limit: int | None = None) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(limit)}

    return {
        "samples": total,
        "self_by_package_pct": pct(self_pkg),
        "inclusive_by_package_pct": pct(incl_pkg),
        "inclusive_by_category_pct": pct(incl_cat),
        "top_self_pct": pct(self_fn, top),
        "top_inclusive_pct": pct(incl_fn, top),
    }


def summarize_file(path: Path, *, top: int = 20) -> dict[str, Any]:
    with path.open(encoding="utf-8", errors="replace") as f:
        return summarize(parse_collapsed(f), top=top)
