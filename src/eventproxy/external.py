"""``data_plane = "external"``: confirm route changes on ``eventproxy dataplane`` nodes.

EventProxy serves no traffic itself; each node follows the same route log. A change is visible
when every node (``require_all_endpoints``, the default) or a majority of them has applied its
seq, which each node's admin listener says through the long-poll
``GET /health?min_seq=N&timeout=S`` (one request per node, answered the moment the node has
it, or 504): no sleep loop. A node that does not answer, or answers late, is named in the
error (or, with ``require_all_endpoints = False`` and a majority confirmed, in a warning).
``activity()`` merges the nodes' ``GET /activity`` (router -> last activity): the latest wins.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

import httpx

from ._errors import VisibilityTimeoutError

__all__ = ["ExternalPlane"]


class ExternalPlane:
    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        require_all: bool = True,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger],
    ) -> None:
        if not endpoints:
            raise ValueError(
                'EventProxy.data_plane = "external" needs data_plane_endpoints: the admin '
                "URLs of the eventproxy dataplane nodes (http://HOST:PORT)"
            )
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.require_all = require_all
        self._log = log
        self._http = httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(10.0))

    async def _confirm_one(self, endpoint: str, seq: int, seconds: float) -> str | None:
        """None when ``endpoint`` has applied ``seq``; else what went wrong."""
        try:
            r = await self._http.get(
                f"{endpoint}/health",
                params={"min_seq": str(seq), "timeout": f"{max(seconds, 0.0):.3f}"},
                timeout=httpx.Timeout(seconds + 2.0),
            )
        except httpx.HTTPError as exc:
            return f"{endpoint}: did not answer ({type(exc).__name__}: {exc})"
        if r.status_code == 200:
            return None
        try:
            applied = r.json().get("applied_seq")
        except ValueError:
            applied = None
        if r.status_code == 504:
            return f"{endpoint}: had applied seq {applied}, not {seq}, after {seconds:.1f}s"
        return f"{endpoint}: answered HTTP {r.status_code}"

    async def confirm(self, seq: int, seconds: float) -> None:
        """Return once the nodes have applied ``seq`` (see the module doc), else raise
        :class:`VisibilityTimeoutError` naming the nodes that do not have it."""
        results = await asyncio.gather(
            *(self._confirm_one(e, seq, seconds) for e in self.endpoints)
        )
        missing = [problem for problem in results if problem is not None]
        if not missing:
            return
        confirmed = len(self.endpoints) - len(missing)
        if not self.require_all and confirmed > len(self.endpoints) // 2:
            self._log.warning(
                "eventproxy: seq %d is on %d of %d data-plane nodes; not on: %s",
                seq,
                confirmed,
                len(self.endpoints),
                "; ".join(missing),
            )
            return
        need = "every" if self.require_all else "a majority of the"
        raise VisibilityTimeoutError(
            f"the route change at seq {seq} is durable in the log but was not confirmed on "
            f"{need} data-plane node(s) ({confirmed} of {len(self.endpoints)}): "
            + "; ".join(missing)
        )

    async def activity(self) -> dict[str, datetime]:
        """Router name -> the latest activity any node reports (nodes that fail are skipped)."""

        async def one(endpoint: str) -> dict[str, str]:
            try:
                r = await self._http.get(f"{endpoint}/activity", timeout=5.0)
                doc = r.json() if r.status_code == 200 else {}
            except (httpx.HTTPError, ValueError) as exc:
                self._log.warning("eventproxy: no activity from %s: %s", endpoint, exc)
                return {}
            return doc if isinstance(doc, dict) else {}

        merged: dict[str, datetime] = {}
        for found in await asyncio.gather(*(one(e) for e in self.endpoints)):
            for name, text in found.items():
                try:
                    ts = datetime.fromisoformat(str(text))
                except ValueError:
                    continue
                if ts.tzinfo is not None and (name not in merged or ts > merged[name]):
                    merged[name] = ts
        return merged

    async def aclose(self) -> None:
        await self._http.aclose()
