"""Connections to backend servers: one response parser per socket, pooled per server.

Theory of operation: a :class:`BackendConnection` is an anyio byte stream plus a response
parser (:mod:`._http`; h11 or httptools as ``ProxySettings.parser`` says). Every transport or
protocol failure is translated into a
:class:`BackendError` subclass here, so the proxy never sees a raw ``OSError`` or an anyio
exception.

The :class:`BackendPool` keeps idle connections whose last exchange ended cleanly (the request
was sent whole, the response read whole and it kept the connection alive): per server URL a
LIFO stack (the warmest is reused first), and across all
servers one list in idle order (oldest first). A connection is *checked out* by ``acquire`` and
comes back by ``release`` (pooled, or closed if it cannot be reused) or by its own ``aclose``.
What bounds the pool, so that a proxy whose users start and stop servers all day holds no more
sockets than it uses:

* caps: at most ``pool_max_idle`` idle connections per server and ``pool_max_idle_total`` in
  all; the oldest idle one is closed to make room;
* idle timeout: a connection idle for ``pool_idle_timeout`` seconds is closed;
* retirement: when no route sends to a server any more, the data plane calls ``retire``: its
  idle connections are closed at once, and connections to it still in use (or still being
  opened) are closed when they come back instead of being pooled;
* a backend that closed an idle connection (FIN, RST, or bytes nobody asked for) is noticed and
  the socket released, never left in CLOSE_WAIT: on the asyncio-protocol edge the protocol's
  ``eof_received``/``connection_lost`` closes it at once; on anyio streams (asyncio or trio)
  :meth:`BackendPool.maintain` polls every idle socket in one non-blocking ``poll(0)`` call per
  sweep (``POLLRDHUP`` on Linux). The sweep runs every ``min(1 s, pool_idle_timeout / 4)``, and
  at once when ``retire`` left connections that need an await to close.

A reused connection may still have been closed by the backend just before it was taken: the
proxy retries such a request once on a fresh connection when nothing of the response had
arrived and the whole request was still in hand.
"""

from __future__ import annotations

import select
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc

from ._errors import (
    BackendConnectError,
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
)
from ._http import (
    NEED_DATA,
    Body,
    EndOfMessage,
    ParseError,
    ResponseEvent,
    ResponseHead,
    ResponseParser,
    ResponseParserFactory,
    parser_classes,
)
from ._proxy_fast import connect_fast, fast_edge_available
from ._settings import ProxySettings

_RECEIVE_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
# poll() flags meaning "the peer closed (or the socket failed)"; POLLRDHUP is Linux's half-close
_HUNG_UP = select.POLLHUP | select.POLLERR | select.POLLNVAL | getattr(select, "POLLRDHUP", 0)
_WATCH = select.POLLIN | getattr(select, "POLLRDHUP", 0)


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
    """One socket to a backend and the response parser that frames what it sends."""

    __slots__ = (
        "address",
        "idle_since",
        "parser",
        "pool",
        "read_size",
        "request_sent",
        "response_done",
        "stream",
        "tls",
    )

    def __init__(
        self,
        address: ServerAddress,
        stream: anyio.abc.ByteStream,
        settings: ProxySettings,
        pool: BackendPool | None = None,
        parser: ResponseParser | None = None,
    ) -> None:
        self.address = address
        self.stream = stream
        if parser is None:
            parser = parser_classes(settings.parser)[1](settings.max_header_bytes)
        self.parser = parser
        # the current exchange: the whole request went out / the whole response came back and
        # allows the connection to be reused
        self.request_sent = False
        self.response_done = False
        self.read_size = settings.read_size
        self.idle_since = 0.0
        self.tls = address.tls
        # the pool that lent this connection out (None while it is idle in the pool, or never
        # from a pool): closing it gives it back
        self.pool = pool

    async def send(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except _RECEIVE_ERRORS as exc:
            raise BackendProtocolError(
                f"backend {self.address.url} closed the connection while we sent: {exc!r}"
            ) from None

    def start(self, method: bytes, *, upgrade: bool = False, request_sent: bool = True) -> None:
        """A new exchange: the response answers ``method`` (``upgrade``: a 101 is expected);
        ``request_sent``: the request is sent whole at once (else the body is streamed)."""
        self.parser.expect(method, upgrade=upgrade)
        self.request_sent = request_sent
        self.response_done = False

    async def next_event(self) -> ResponseEvent:
        """The next parser event (never ``NEED_DATA``), reading from the socket as needed."""
        parser = self.parser
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                raise BackendProtocolError(
                    f"backend {self.address.url} sent invalid HTTP: {exc.reason}"
                ) from None
            if event is not NEED_DATA:
                return event
            if parser.eof:
                raise BackendProtocolError(f"backend {self.address.url} closed the connection")
            try:
                data = await self.stream.receive(self.read_size)
            except anyio.EndOfStream:
                data = b""
            except _RECEIVE_ERRORS as exc:
                raise BackendProtocolError(
                    f"backend {self.address.url} reset the connection: {exc!r}"
                ) from None
            parser.feed(data)

    @property
    def reusable(self) -> bool:
        return self.request_sent and self.response_done

    def fileno(self) -> int:
        """The socket's file descriptor, or -1 (no raw socket, or closed)."""
        try:
            sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        except (anyio.TypedAttributeLookupError, OSError):
            return -1
        try:
            return int(sock.fileno())
        except (OSError, ValueError):
            return -1

    async def aclose(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            pool._checked_in(self.address.url)
        await anyio.aclose_forcefully(self.stream)


async def _close_all(conns: Iterable[BackendConnection]) -> None:
    """Close every one of ``conns``, even when cancelled: each close is quick, and a
    cancellation that stopped the loop half-way (a plane shutting down mid-sweep) would leave
    the rest open, their sockets unowned until garbage collected."""
    with anyio.CancelScope(shield=True):
        for conn in conns:
            await anyio.aclose_forcefully(conn.stream)


def _close_now(conn: BackendConnection) -> bool:
    """Close ``conn`` without awaiting if its stream can (the asyncio-protocol edge)."""
    close = getattr(conn.stream, "close_now", None)
    if close is None:
        return False
    close()
    return True


class BackendPool:
    """Idle keep-alive connections per backend server URL, bounded (see the module docstring)."""

    def __init__(self, settings: ProxySettings, ssl_context: ssl.SSLContext | None = None) -> None:
        self._settings = settings
        self._idle: dict[str, list[BackendConnection]] = {}  # per URL, LIFO
        self._order: dict[BackendConnection, None] = {}  # every idle connection, oldest first
        self._busy: dict[str, int] = {}  # checked-out connections per URL
        self._retired: set[str] = set()  # retired URLs that still have checked-out connections
        self._closing: list[BackendConnection] = []  # to be closed by the next sweep
        self._wake: anyio.Event | None = None
        self._addresses: dict[str, ServerAddress] = {}
        self._ssl_context = ssl_context
        self._sweep_every = min(1.0, settings.pool_idle_timeout / 4)
        self._new_parser: ResponseParserFactory = parser_classes(settings.parser)[1]
        self.opened = 0
        # why idle connections were closed: "timeout", "peer_closed", "cap", "retired"
        self.closed: dict[str, int] = {"timeout": 0, "peer_closed": 0, "cap": 0, "retired": 0}

    # -- what is pooled (for tests, metrics and leak checks) -------------------------------
    @property
    def idle_count(self) -> int:
        return len(self._order)

    def idle_urls(self) -> dict[str, int]:
        """Server URL -> idle connections pooled for it."""
        return {url: len(stack) for url, stack in self._idle.items()}

    @property
    def checked_out(self) -> int:
        return sum(self._busy.values())

    def address(self, url: str) -> ServerAddress:
        addr = self._addresses.get(url)
        if addr is None:
            if len(self._addresses) > 10000:
                self._addresses.clear()
            addr = self._addresses[url] = ServerAddress.parse(url)
        return addr

    async def acquire(self, url: str) -> tuple[BackendConnection, bool]:
        """A connection to ``url``: an idle pooled one (``True``) or a new one (``False``)."""
        stale: list[BackendConnection] = []
        found = self._take_idle(url, stale.append)
        await _close_all(stale)
        if found is not None:
            return found, True
        self._retired.discard(url)  # someone sends to it again
        # in use from now on, not once connected: a retire while it connects is remembered
        self._busy[url] = self._busy.get(url, 0) + 1
        try:
            conn = await self.connect(url)
        except BaseException:
            self._checked_in(url)
            raise
        conn.pool = self  # new: no EOF watch to stop, and already counted busy
        return conn, False

    def acquire_idle(self, url: str) -> BackendConnection | None:
        """An idle pooled connection to ``url``, or None (then :meth:`acquire` connects).

        Synchronous, for the callback edge: stale connections met on the way are closed at
        once (or by the next sweep)."""
        return self._take_idle(url, self._close_later)

    def _take_idle(
        self, url: str, discard: Callable[[BackendConnection], None]
    ) -> BackendConnection | None:
        """Check out the newest live idle connection to ``url``, if any; the stale ones met on
        the way (idle too long, or closed by the peer) are counted and given to ``discard``."""
        stack = self._idle.get(url)
        if not stack:
            return None
        limit = time.monotonic() - self._settings.pool_idle_timeout
        found = None
        while stack:
            conn = stack.pop()
            del self._order[conn]
            if conn.idle_since >= limit and not getattr(conn.stream, "dead", False):
                found = conn
                break
            self.closed["timeout" if conn.idle_since < limit else "peer_closed"] += 1
            discard(conn)
        if not stack:
            del self._idle[url]
        if found is not None:
            self._check_out(found)
        return found

    def _close_later(self, conn: BackendConnection) -> None:
        if not _close_now(conn):
            self._closing.append(conn)
            if self._wake is not None:
                self._wake.set()

    def _check_out(self, conn: BackendConnection) -> None:
        watch = getattr(conn.stream, "watch_eof", None)
        if watch is not None:
            watch(None)
        conn.pool = self
        url = conn.address.url
        self._busy[url] = self._busy.get(url, 0) + 1

    def _checked_in(self, url: str) -> None:
        n = self._busy.get(url, 0) - 1
        if n > 0:
            self._busy[url] = n
            return
        self._busy.pop(url, None)
        self._retired.discard(url)

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
        return BackendConnection(
            addr, stream, settings, parser=self._new_parser(settings.max_header_bytes)
        )

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    async def release(self, conn: BackendConnection) -> None:
        """Return ``conn`` to the pool if its exchange ended cleanly, else close it."""
        if not self._pool(conn):
            await conn.aclose()

    def release_now(self, conn: BackendConnection) -> None:
        """:meth:`release`, synchronous (for the callback edge)."""
        if not self._pool(conn):
            conn.pool = None
            self._close_later(conn)

    def _pool(self, conn: BackendConnection) -> bool:
        """Check ``conn`` in; pool it if it can be reused (True), else leave it to close."""
        url = conn.address.url
        retired = url in self._retired
        if conn.pool is self:
            conn.pool = None
            self._checked_in(url)
        if not conn.reusable or retired or getattr(conn.stream, "dead", False):
            return False
        settings = self._settings
        stack = self._idle.get(url)
        if stack is not None and len(stack) >= settings.pool_max_idle:
            self._drop(stack[0], "cap")  # the oldest of this server
        elif len(self._order) >= settings.pool_max_idle_total:
            self._drop(next(iter(self._order)), "cap")  # the oldest of all
        stack = self._idle.setdefault(url, [])
        conn.parser.start_next_cycle()
        conn.request_sent = conn.response_done = False
        conn.idle_since = time.monotonic()
        stack.append(conn)
        self._order[conn] = None
        watch = getattr(conn.stream, "watch_eof", None)
        if watch is not None:
            watch(lambda: self._peer_closed(conn))
        return True

    def _peer_closed(self, conn: BackendConnection) -> None:
        """The fast edge saw EOF (or loss) on a connection; release it if it is idle here."""
        if conn in self._order:
            self._drop(conn, "peer_closed")

    def _drop(self, conn: BackendConnection, why: str) -> None:
        """Take an idle connection out of the pool and close it (now, or in the next sweep)."""
        del self._order[conn]
        url = conn.address.url
        stack = self._idle[url]
        stack.remove(conn)
        if not stack:
            del self._idle[url]
        self.closed[why] += 1
        if not _close_now(conn):
            self._closing.append(conn)
            if self._wake is not None:
                self._wake.set()

    def retire(self, urls: Iterable[str]) -> None:
        """No route sends to ``urls`` any more: close their idle connections, and close
        connections to them still in use when they come back (synchronous; never blocks)."""
        for url in urls:
            self._addresses.pop(url, None)
            for conn in list(self._idle.get(url, ())):
                self._drop(conn, "retired")
            if url in self._busy:
                self._retired.add(url)

    async def sweep(self) -> None:
        """Close idle connections that timed out or whose backend closed them."""
        limit = time.monotonic() - self._settings.pool_idle_timeout
        for conn in list(self._order):
            if conn.idle_since >= limit:
                break  # oldest first: the rest are younger
            self._drop(conn, "timeout")
        if self._order:
            self._poll_idle()
        closing, self._closing = self._closing, []
        await _close_all(closing)

    def _poll_idle(self) -> None:
        """One ``poll(0)`` over the idle sockets the protocol edge does not watch itself."""
        poller = select.poll()
        by_fd: dict[int, BackendConnection] = {}
        for conn in self._order:
            if getattr(conn.stream, "dead", None) is True:
                by_fd[-1 - len(by_fd)] = conn  # the protocol saw EOF; drop it below
                continue
            if hasattr(conn.stream, "watch_eof"):
                continue  # the asyncio-protocol edge is told of EOF by its transport
            fd = conn.fileno()
            if fd < 0:
                by_fd[-1 - len(by_fd)] = conn
                continue
            by_fd[fd] = conn
            poller.register(fd, _WATCH)
        dead = [conn for fd, conn in by_fd.items() if fd < 0]
        if len(dead) < len(by_fd):
            for fd, events in poller.poll(0):
                conn = by_fd[fd]
                # bytes on an idle plain-HTTP connection are not an answer to anything: the
                # backend is closing or misbehaving. (On TLS they may be a session ticket.)
                if events & _HUNG_UP or not conn.tls:
                    dead.append(conn)
        for conn in dead:
            if conn in self._order:
                self._drop(conn, "peer_closed")

    async def maintain(self) -> None:
        """Sweep every ``min(1 s, pool_idle_timeout / 4)`` (and when woken) until cancelled."""
        while True:
            if self._wake is None or self._wake.is_set():
                self._wake = anyio.Event()
            with anyio.move_on_after(self._sweep_every):
                await self._wake.wait()
            await self.sweep()

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle, self._order = self._order, {}, {}
        closing, self._closing = self._closing, []
        await _close_all([*idle, *closing])


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
        head = (
            b"GET " + target.encode("ascii") + b" HTTP/1.1\r\nhost: " + conn.address.netloc
            + b"\r\naccept: text/html, */*\r\n\r\n"
        )  # fmt: skip
        conn.start(b"GET")
        await conn.send(head)
        event = await conn.next_event()
        while type(event) is ResponseHead and event.status < 200:
            event = await conn.next_event()
        if type(event) is not ResponseHead:
            raise BackendProtocolError(f"{url} sent no response")
        status = event.status
        keep_alive = event.keep_alive
        content_type = None
        for name, value in event.headers:
            if name == b"content-type":
                content_type = value
        body = bytearray()
        while True:
            event = await conn.next_event()
            if type(event) is Body:
                body += event.data
                if len(body) > max_body:
                    raise BackendProtocolError(f"{url} sent more than {max_body} bytes")
            elif type(event) is EndOfMessage:
                conn.response_done = keep_alive
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
