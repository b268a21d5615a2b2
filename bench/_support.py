"""The test-support helpers (``tests/support``), importable from the benchmarks.

Benchmarks reuse the tests' process, port and launcher helpers rather than growing their own;
``tests/`` is put on ``sys.path`` here (pytest does the same through ``pythonpath``).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_TESTS = str(ROOT / "tests")
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

from support import (  # noqa: E402
    LOOPBACK,
    ChildProcess,
    child_process,
    free_port,
    port_accepts,
    wait_until,
)
from support.tools import ToolMissing, require  # noqa: E402

__all__ = [
    "LOOPBACK",
    "ROOT",
    "ChildProcess",
    "ToolMissing",
    "child_process",
    "free_port",
    "port_accepts",
    "require",
    "wait_until",
]
