"""Crash test: a writer killed with SIGKILL at random moments loses nothing it acknowledged.

A child process appends batches in a loop and prints each seq after ``append`` returned. We kill
it at random points (at least 20 times, on the same file), reopen the log each time, and check:
every acknowledged event is there, in order, exactly as written, and nothing else — at most the
one batch that was being written when the kill came (durable, but not yet acknowledged).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio

from eventproxy.log import FileRouteLog

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from crash_writer import event_for  # noqa: E402

KILLS = 24
MAX_BATCH = 5


def read_acks(proc: subprocess.Popen[bytes], until: float, want: int) -> list[int]:
    """Read ACK lines until ``want`` arrived or ``until`` (monotonic) passed."""
    assert proc.stdout is not None
    acks: list[int] = []
    buf = b""
    fd = proc.stdout.fileno()
    while len(acks) < want and time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        *lines, buf = buf.split(b"\n")
        acks += [int(line.split()[1]) for line in lines if line.startswith(b"ACK ")]
    return acks


async def check_log(path: Path) -> int:
    async with await FileRouteLog.open(path) as log:  # a writer: recovers a torn tail
        records = await log.read()
    for record in records:
        assert record.event == event_for(record.seq), record.seq
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    return len(records)


def test_sigkill_at_random_moments_loses_no_acknowledged_event(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    path = tmp_path / "routes.log"
    acknowledged = 0
    for kill in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "crash_writer.py"), str(path), str(kill)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            acks = read_acks(proc, time.monotonic() + 30, rng.randint(1, 40))
            assert acks, f"writer {kill} acknowledged nothing"
            # Kill at a random moment after some acknowledgements: sometimes at once (likely
            # mid-append), sometimes after a short random delay.
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
            acks += read_acks(proc, time.monotonic() + 1, 10**9)  # lines already in the pipe
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
            assert proc.stdout is not None
            proc.stdout.close()
        acknowledged = max(acknowledged, *acks)
        head = anyio.run(check_log, path)
        assert acknowledged <= head <= acknowledged + MAX_BATCH, (kill, acknowledged, head)
        acknowledged = head  # durable now; the next writer continues after it
