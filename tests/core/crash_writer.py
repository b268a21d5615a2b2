"""Child process for the crash test: appends to a file log forever, printing each acknowledged
seq after ``append`` returns. The parent SIGKILLs it at random moments."""

from __future__ import annotations

import random
import sys

import anyio

from eventproxy import RouteAdded, RouteRemoved
from eventproxy.events import Event
from eventproxy.log import FileRouteLog


def event_for(seq: int) -> Event:
    """The event the writer appends at ``seq``: a pure function of seq, so the parent can check."""
    if seq % 3 == 0:
        return RouteRemoved(f"/user/u{seq - 1}/")
    return RouteAdded(f"/user/u{seq}/", f"http://127.0.0.1:{1024 + seq % 60000}", {"seq": seq})


async def main(path: str, seed: int) -> None:
    rng = random.Random(seed)
    async with await FileRouteLog.open(path) as log:
        head = await log.head()
        print(f"READY {head}", flush=True)
        while True:
            size = rng.randint(1, 5)
            batch = [event_for(head + 1 + i) for i in range(size)]
            seqs = await log.append(batch)
            head = seqs[-1]
            print(f"ACK {head}", flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]))
