"""Confirming that every traefik replica routes a change.

Theory of operation
-------------------
A replica routes seq ``N`` once the projection's marker router, as its API shows it, carries a
seq ``>= N`` (traefik swaps its whole configuration at once, so every change up to ``N`` is
then live). Checking costs one small API request per replica per poll, whatever the size of
the burst being confirmed; all replicas are polled concurrently, each with a short backoff
(2 ms doubling to 10 ms: a reload takes 10-30 ms).

* ``require_all=True``: :meth:`TraefikVisibility.wait` returns when every replica routes ``N``;
  at the deadline it raises :class:`VisibilityTimeoutError` naming each replica that does not
  (and what it last said: its seq, or the error).
* ``require_all=False``: replicas that cannot be reached are left out at once (and skipped for
  ``down_for`` seconds, so a dead replica does not slow every change) and named in a warning;
  the call fails only if no replica at all routes ``N``.
* File provider: traefik learns of a new file from an inotify event. If a replica has not
  picked up a write within ``nudge_after`` seconds, ``nudge`` (the file projector's) writes the
  file again, so a lost event delays a confirmation by a moment but can never hang it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence

import anyio

from ._errors import VisibilityTimeoutError
from .traefik_api import TraefikAPI, TraefikAPIError

__all__ = ["TraefikVisibility"]

logger = logging.getLogger("eventproxy.visibility")


class _Replica:
    __slots__ = ("api", "down_until", "last_error", "seq")

    def __init__(self, api: TraefikAPI) -> None:
        self.api = api
        self.seq = 0
        self.last_error: str | None = None
        self.down_until = 0.0

    def describe(self) -> str:
        what = self.last_error or f"routes seq {self.seq}"
        return f"{self.api.url} ({what})"


class TraefikVisibility:
    def __init__(
        self,
        apis: Sequence[TraefikAPI],
        provider: str,
        *,
        require_all: bool = True,
        nudge: Callable[[], Awaitable[None]] | None = None,
        nudge_after: float = 1.0,
        down_for: float = 2.0,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] = logger,
    ) -> None:
        if not apis:
            raise ValueError("no traefik API URL to confirm visibility with")
        self.replicas = [_Replica(api) for api in apis]
        self.provider = provider
        self.require_all = require_all
        self.nudge = nudge
        self.nudge_after = nudge_after
        self.down_for = down_for
        self._log = log
        self.nudges = 0

    async def _poll(self, replica: _Replica, seq: int, deadline: float, skip_down: bool) -> None:
        delay = 0.002
        while True:
            try:
                replica.seq = await replica.api.routed_seq(self.provider)
                replica.last_error = None
                replica.down_until = 0.0
            except TraefikAPIError as exc:
                replica.last_error = str(exc)
                if skip_down:
                    replica.down_until = time.monotonic() + self.down_for
                    return
            if replica.seq >= seq:
                return
            if time.monotonic() + delay > deadline:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, 0.01)

    async def _nudger(self, seq: int, targets: list[_Replica]) -> None:
        assert self.nudge is not None
        while True:
            await anyio.sleep(self.nudge_after)
            if all(r.seq >= seq for r in targets if r.last_error is None):
                return
            self.nudges += 1
            self._log.warning(
                "eventproxy: traefik has not loaded seq %d after %.1fs; rewriting its file",
                seq,
                self.nudge_after,
            )
            await self.nudge()

    async def wait(self, seq: int, within: float) -> list[str]:
        """Return once the replicas route ``seq`` (see the module docstring); the warnings
        (replicas left out) are returned, and logged."""
        now = time.monotonic()
        deadline = now + within
        skip_down = not self.require_all
        targets = [
            r for r in self.replicas if r.seq < seq and not (skip_down and r.down_until > now)
        ]
        if targets:
            async with anyio.create_task_group() as tg:
                if self.nudge is not None:
                    tg.start_soon(self._nudger, seq, targets)
                async with anyio.create_task_group() as polls:
                    for replica in targets:
                        polls.start_soon(self._poll, replica, seq, deadline, skip_down)
                tg.cancel_scope.cancel()
        missing = [r for r in self.replicas if r.seq < seq]
        if not missing:
            return []
        names = ", ".join(r.describe() for r in missing)
        if self.require_all or len(missing) == len(self.replicas):
            raise VisibilityTimeoutError(
                f"seq {seq} is durable but not routed by every traefik replica within "
                f"{within:.1f}s: {names}"
            )
        routed = len(self.replicas) - len(missing)
        warning = (
            f"seq {seq} is routed by {routed} of {len(self.replicas)} traefik replicas; "
            f"not by {names}"
        )
        self._log.warning("eventproxy: %s", warning)
        return [warning]
