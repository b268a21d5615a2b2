"""A client for one traefik replica's API and metrics: which seq does it route, what traffic has
it seen. Async (httpx), nothing blocks the event loop; errors become :class:`TraefikAPIError`.

* :meth:`TraefikAPI.routed_seq` reads the projection's marker router
  (``/api/http/routers/eventproxy-_applied@<provider>``) -- one small request whatever the
  number of routes -- and returns the seq its rule carries: the replica routes every change up
  to it (traefik swaps its whole configuration at once).
* :meth:`TraefikAPI.metrics` returns the Prometheus text of ``/metrics``.
"""

from __future__ import annotations

import httpx

from ._errors import EventProxyError
from .projectors.traefik_config import MARKER, seq_from_marker_rule

__all__ = ["TraefikAPI", "TraefikAPIError"]


class TraefikAPIError(EventProxyError):
    """A traefik replica's API did not answer, or answered something unexpected."""


class TraefikAPI:
    def __init__(
        self,
        url: str,
        *,
        username: str = "",
        password: str = "",
        timeout: float = 5.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        auth = httpx.BasicAuth(username, password) if username or password else None
        self._own = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(timeout), auth=auth)
        self._auth = auth

    async def _get(self, path: str) -> httpx.Response:
        try:
            return await self._client.get(
                self.url + path, auth=self._auth or httpx.USE_CLIENT_DEFAULT
            )
        except httpx.HTTPError as exc:
            raise TraefikAPIError(f"traefik API {self.url}: {type(exc).__name__}: {exc}") from None

    async def routed_seq(self, provider: str) -> int:
        """The seq of the projection this replica routes (0: no projection loaded yet)."""
        resp = await self._get(f"/api/http/routers/{MARKER}@{provider}")
        if resp.status_code == 404:
            return 0
        if resp.status_code != 200:
            raise TraefikAPIError(
                f"traefik API {self.url}: HTTP {resp.status_code} for the marker router"
            )
        try:
            rule = resp.json().get("rule")
        except ValueError:
            raise TraefikAPIError(
                f"traefik API {self.url}: the marker router is not JSON"
            ) from None
        return seq_from_marker_rule(rule) or 0

    async def metrics(self, path: str = "/metrics") -> str:
        resp = await self._get(path)
        if resp.status_code != 200:
            raise TraefikAPIError(f"traefik metrics {self.url}{path}: HTTP {resp.status_code}")
        return resp.text

    async def ping(self) -> bool:
        try:
            resp = await self._get("/api/overview")
        except TraefikAPIError:
            return False
        return resp.status_code == 200

    async def aclose(self) -> None:
        if self._own:
            await self._client.aclose()
