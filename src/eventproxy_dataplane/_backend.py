"""Connections to backend servers: one h11 client connection per socket, pooled per server.

Theory of operation: a :class:`BackendConnection` is an anyio byte stream plus an
``h11.Connection(CLIENT)``. Every transport or protocol failure is translated into a
:class:`BackendError` subclass here, so the proxy never sees a raw ``OSError`` or an anyio
exception. The :class:`BackendPool` keeps, per server URL, a bounded LIFO stack of idle
connections whose last exchange ended cleanly (both h11 sides ``DONE``); a connection idle for
longer than ``pool_idle_timeout`` is closed instead of reused. A reused connection may have been
closed by the backend while it sat idle: the proxy retries such a request once on a fresh
connection when nothing of the response had arrived and the whole request was still in hand.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc
import h11

from ._errors import (
    BackendConnectError,
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
)
from ._proxy_fast import connect_fast, fast_edge_available
from ._settings import ProxySettings

_RECEIVE_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A backend server URL taken apart once: ``http://host:port`` (any path is ignored)."""

    url: str
    host: str
    port: int
    tls: bool
    netloc: bytes

    @classmethod
    def parse(cls, url: str) -> ServerAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BackendConnectError(f"backend URL {url!r} is not http(s)://host[:port]")
        tls = parts.scheme == "https"
        try:
            port = parts.port or (443 if tls else 80)
        except ValueError:
            raise BackendConnectError(f"backend URL {url!r} has a bad port") from None
        return cls(url, parts.hostname, port, tls, parts.netloc.encode("idna"))


class BackendConnection:
    """One socket to a backend and the h11 client state machine that frames it."""

    __slots__ = ("address", "h11", "idle_since", "read_size", "stream")

    def __init__(
        self, address: ServerAddress, stream: anyio.abc.ByteStream, settings: ProxySettings
    ) -> None:
        self.address = address
        self.stream = stream
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=settings.max_header_bytes)
        self.read_size = settings.read_size
        self.idle_since = 0.0

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except _RECEIVE_ERRORS as exc:
            raise BackendProtocolError(
                f"backend {self.address.url} closed the connection while we sent: {exc!r}"
            ) from None

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next h11 event, reading from the socket as needed."""
        conn = self.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise BackendProtocolError(
                    f"backend {self.address.url} sent invalid HTTP: {exc}"
                ) from None
            if event is not h11.NEED_DATA:
                if type(event) is h11.ConnectionClosed:
                    raise BackendProtocolError(f"backend {self.address.url} closed the connection")
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive(self.read_size)
            except anyio.EndOfStream:
                data = b""
            except _RECEIVE_ERRORS as exc:
                raise BackendProtocolError(
                    f"backend {self.address.url} reset the connection: {exc!r}"
                ) from None
            conn.receive_data(data)

    @property
    def reusable(self) -> bool:
        return self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)


class BackendPool:
    """Idle keep-alive connections per backend server URL (bounded, LIFO)."""

    def __init__(self, settings: ProxySettings, ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._idle: dict[str, list[BackendConnection]] = {}
        self._addresses: dict[str, ServerAddress] = {}
        self._ssl_context = ssl_context
        self.opened = 0

    def address(self, url: str) -> ServerAddress:
        addr = self._addresses.get(url)
        if addr is None:
            if len(self._addresses) > 10000:
                self._addresses.clear()
            addr = self._addresses[url] = ServerAddress.parse(url)
        return addr

    async def acquire(self, url: str) -> tuple[BackendConnection, bool]:
        """A connection to ``url``: an idle pooled one (``True``) or a new one (``False``)."""
        stack = self._idle.get(url)
        if stack:
            limit = time.monotonic() - self._settings.pool_idle_timeout
            while stack:
                conn = stack.pop()
                if conn.idle_since >= limit and not getattr(conn.stream, "dead", False):
                    return conn, True
                await conn.aclose()
        return await self.connect(url), False

    async def connect(self, url: str) -> BackendConnection:
        addr = self.address(url)
        settings = self._settings
        fast = settings.io_edge == "auto" and fast_edge_available()
        try:
            with anyio.fail_after(settings.connect_timeout):
                if fast:
                    stream: anyio.abc.ByteStream = await connect_fast(
                        addr.host, addr.port, ssl_context=self._tls_context() if addr.tls else None
                    )
                elif addr.tls:
                    stream = await anyio.connect_tcp(
                        addr.host,
                        addr.port,
                        tls=True,
                        ssl_context=self._ssl_context,
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(addr.host, addr.port)
        except TimeoutError:
            raise BackendTimeoutError(
                f"connecting to backend {url} timed out after {settings.connect_timeout}s"
            ) from None
        except (OSError, anyio.BrokenResourceError, ssl.SSLError) as exc:
            raise BackendConnectError(f"cannot connect to backend {url}: {exc}") from None
        self.opened += 1
        return BackendConnection(addr, stream, settings)

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def release(self, conn: BackendConnection) -> None:
        """Return ``conn`` to the pool if its exchange ended cleanly, else close it."""
        if conn.reusable:
            stack = self._idle.setdefault(conn.address.url, [])
            if len(stack) < self._settings.pool_max_idle:
                conn.h11.start_next_cycle()
                conn.idle_since = time.monotonic()
                stack.append(conn)
                return
        await conn.aclose()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                await conn.aclose()


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """A small response read whole (used for ``error_target`` pages)."""

    status: int
    content_type: bytes | None
    body: bytes


async def fetch(pool: BackendPool, url: str, *, max_body: int = 1 << 20) -> FetchedPage:
    """``GET url`` through ``pool``; the body is read whole, up to ``max_body`` bytes."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn, _ = await pool.acquire(f"{parts.scheme}://{parts.netloc}")
    try:
        request = h11.Request(
            method="GET",
            target=target.encode("ascii"),
            headers=[(b"host", conn.address.netloc), (b"accept", b"text/html, */*")],
        )
        await conn.send(conn.h11.send(request) + (conn.h11.send(h11.EndOfMessage()) or b""))
        event = await conn.next_event()
        while type(event) is h11.InformationalResponse:
            event = await conn.next_event()
        if type(event) is not h11.Response:
            raise BackendProtocolError(f"{url} sent no response")
        status = event.status_code
        content_type = None
        for name, value in event.headers:
            if name == b"content-type":
                content_type = value
        body = bytearray()
        while True:
            event = await conn.next_event()
            if type(event) is h11.Data:
                body += event.data
                if len(body) > max_body:
                    raise BackendProtocolError(f"{url} sent more than {max_body} bytes")
            elif type(event) is h11.EndOfMessage:
                break
            else:
                raise BackendProtocolError(f"{url} sent an unexpected {event!r}")
    except BaseException:
        await conn.aclose()
        raise
    await pool.release(conn)
    return FetchedPage(status, content_type, bytes(body))


__all__ = [
    "BackendConnection",
    "BackendError",
    "BackendPool",
    "FetchedPage",
    "ServerAddress",
    "fetch",
]
