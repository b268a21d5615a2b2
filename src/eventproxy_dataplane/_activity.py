"""Per-router last activity, recorded at a bounded rate.

The hot path calls :meth:`Activity.touch` for every request start and end and for WebSocket
traffic. A touch costs one monotonic clock read and one dict lookup; the wall-clock timestamp is
only taken when the router's last recording is older than ``interval`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime


class Activity:
    """Router name -> last activity (UTC), updated at most once per ``interval`` per router."""

    __slots__ = ("_interval", "_last", "_next")

    def __init__(self, interval: float = 1.0) -> None:
        self._interval = interval
        self._next: dict[str, float] = {}
        self._last: dict[str, datetime] = {}

    def touch(self, router: str) -> None:
        now = time.monotonic()
        if now < self._next.get(router, 0.0):
            return
        self._next[router] = now + self._interval
        self._last[router] = datetime.now(UTC)

    def snapshot(self) -> Mapping[str, datetime]:
        """A copy: router name -> last recorded activity."""
        return dict(self._last)

    def forget(self, routers: Iterable[str]) -> None:
        """Drop what is known of ``routers`` (removed, or now sending to another server)."""
        last, following = self._last, self._next
        for name in routers:
            last.pop(name, None)
            following.pop(name, None)

    def __len__(self) -> int:
        return len(self._next)
