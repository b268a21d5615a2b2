"""The fast I/O edge for asyncio: byte streams over a bare ``asyncio.Protocol`` (uvloop-friendly).

The proxy core (:mod:`._proxy`, h11 plus the pure header rules) only needs byte streams with
``receive``/``send``/``aclose``. anyio's asyncio streams pay for generality on every call: each
``receive`` resumes and pauses the transport (two event-loop registrations) and each call is a
scheduling checkpoint. :class:`FastStream` is the same interface over a protocol that keeps
reading while its buffer is below a high-water mark, returns buffered data without a round trip
through the loop, and writes straight to the transport, waiting only while the transport says
its write buffer is full (``pause_writing``/``resume_writing``). Back-pressure holds both ways:
a full read buffer pauses reading from the socket; a full write buffer suspends the writer.

The listener (:func:`serve_fast`) starts one asyncio task per accepted connection and, when it
is cancelled, closes the server, cancels those tasks and waits for them. anyio cancel scopes
and task groups work inside these tasks, so the core runs unchanged on either edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import anyio
import anyio.abc

logger = logging.getLogger("eventproxy_dataplane")

_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
_CLOSE_GRACE = 30.0  # seconds a closed connection may take to flush its write buffer


def release_transport_cycle(transport: asyncio.BaseTransport) -> None:
    """Let a closed stock-asyncio socket transport be freed by its reference count.

    CPython's selector transport keeps a bound method of itself (``_read_ready_cb``, set in
    ``set_protocol``) that ``connection_lost`` never clears, so every closed connection is a
    reference cycle (the transport, its socket object and buffers, about 1 KB) that only a
    full garbage collection frees: under load a hub's in-process plane carried thousands of
    dead transports between collections (bench soak, issue 13). The attribute is read only
    while the socket is registered for reading, which a lost connection no longer is. uvloop's
    transports have no such attribute.
    """
    if hasattr(transport, "_read_ready_cb"):
        transport._read_ready_cb = None


class _StreamProtocol(asyncio.Protocol):
    __slots__ = (
        "buffer",
        "drain_waiter",
        "eof",
        "exc",
        "loop",
        "lost",
        "on_eof",
        "on_made",
        "on_writable",
        "read_paused",
        "read_waiter",
        "sink",
        "sink_lost",
        "size",
        "tls",
        "transport",
        "write_paused",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_made: Callable[[_StreamProtocol], None] | None = None,
    ) -> None:
        self.loop = loop
        self.on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.buffer: deque[bytes] = deque()
        self.size = 0
        self.read_waiter: asyncio.Future[None] | None = None
        self.drain_waiter: asyncio.Future[None] | None = None
        self.read_paused = False
        self.write_paused = False
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        self.tls = False
        # called once when the peer closes or the connection is lost (a pooled idle connection
        # is then released at once, never left in CLOSE_WAIT)
        self.on_eof: Callable[[], None] | None = None
        # callback mode (the callback edge, :mod:`._edge_callback`): bytes go to ``sink``
        # (``b""``: EOF) instead of the buffer, loss to ``sink_lost``, write-buffer state to
        # ``on_writable``
        self.sink: Callable[[bytes], None] | None = None
        self.sink_lost: Callable[[BaseException | None], None] | None = None
        self.on_writable: Callable[[bool], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the Transport interface without subclassing it
        self.transport = transport  # type: ignore[assignment]
        self.tls = transport.get_extra_info("sslcontext") is not None
        if self.on_made is not None:
            self.on_made(self)

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None:
            self.read_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None:
            self.drain_waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def set_reading(self, on: bool) -> None:
        """Pause or resume reading from the socket (callback mode)."""
        if on == self.read_paused:
            transport = self.transport
            self.read_paused = not on
            if transport is not None and not self.lost and not transport.is_closing():
                if on:
                    transport.resume_reading()
                else:
                    transport.pause_reading()

    def take_buffer(self) -> bytes:
        """What was buffered before callback mode started."""
        data = b"".join(self.buffer)
        self.buffer.clear()
        self.size = 0
        return data

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is not None:
            sink(data)
            return
        self.buffer.append(data)
        self.size += len(data)
        if self.read_waiter is not None:
            self._wake_reader()
        if self.size > _HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _notify_eof(self) -> None:
        callback, self.on_eof = self.on_eof, None
        if callback is not None:
            callback()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        self._notify_eof()
        sink = self.sink
        if sink is not None:
            sink(b"")
        # keep the write side open (the stream's owner closes); TLS cannot half-close
        return not self.tls

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.eof = True
        self.exc = exc
        if self.transport is not None:
            release_transport_cycle(self.transport)
        self._wake_reader()
        self._wake_writer()
        self._notify_eof()
        lost = self.sink_lost
        if lost is not None:
            lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        callback = self.on_writable
        if callback is not None:
            callback(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_writer()
        callback = self.on_writable
        if callback is not None:
            callback(True)


class FastStream(anyio.abc.ByteStream):
    """An anyio byte stream over :class:`_StreamProtocol` (asyncio only)."""

    def __init__(self, protocol: _StreamProtocol) -> None:
        assert protocol.transport is not None
        self._p = protocol
        self._transport = protocol.transport
        self._closed = False

    @property
    def protocol(self) -> _StreamProtocol:
        return self._p

    @property
    def dead(self) -> bool:
        """True once the peer closed or the connection was lost (a pooled one is not reused)."""
        return self._p.eof or self._closed

    def watch_eof(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (from the event loop) when the peer closes or the connection is
        lost; ``None`` stops watching. Already closed: called at once."""
        p = self._p
        if callback is not None and (p.eof or self._closed):
            callback()
            return
        p.on_eof = callback

    def close_now(self) -> None:
        """Close without awaiting (what :meth:`aclose` does; it never needs to wait)."""
        self._closed = True
        self._p.on_eof = None
        transport = self._transport
        if transport.is_closing():
            return
        pending = transport.get_write_buffer_size()
        transport.close()  # flushes what is buffered, then closes
        if pending:
            # a peer that stopped reading must not keep the socket (and the buffer) forever
            self._p.loop.call_later(_CLOSE_GRACE, transport.abort)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        p = self._p
        while not p.buffer:
            if self._closed:
                raise anyio.ClosedResourceError
            if p.eof:
                if p.exc is not None:
                    raise anyio.BrokenResourceError from p.exc
                raise anyio.EndOfStream
            waiter = p.loop.create_future()
            p.read_waiter = waiter
            try:
                await waiter
            finally:
                p.read_waiter = None
        chunk = p.buffer.popleft()
        if len(chunk) > max_bytes:
            p.buffer.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        p.size -= len(chunk)
        if p.read_paused and p.size < _LOW_WATER and not p.lost:
            p.read_paused = False
            self._transport.resume_reading()
        return chunk

    async def send(self, item: bytes) -> None:
        p = self._p
        if self._closed:
            raise anyio.ClosedResourceError
        if p.lost or self._transport.is_closing():
            raise anyio.BrokenResourceError from p.exc
        self._transport.write(item)
        while p.write_paused:
            if p.lost:
                raise anyio.BrokenResourceError from p.exc
            waiter = p.loop.create_future()
            p.drain_waiter = waiter
            try:
                await waiter
            finally:
                p.drain_waiter = None
        if p.lost:
            raise anyio.BrokenResourceError from p.exc

    async def send_eof(self) -> None:
        if self._transport.can_write_eof() and not self._transport.is_closing():
            self._transport.write_eof()

    async def aclose(self) -> None:
        self.close_now()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        transport = self._transport
        return {
            anyio.abc.SocketAttribute.remote_address: lambda: transport.get_extra_info("peername"),
            anyio.abc.SocketAttribute.local_address: lambda: transport.get_extra_info("sockname"),
            anyio.abc.SocketAttribute.raw_socket: lambda: transport.get_extra_info("socket"),
        }


def fast_edge_available() -> bool:
    """True when running on asyncio (the fast edge needs an asyncio event loop)."""
    try:
        import sniffio
    except ImportError:  # pragma: no cover - anyio installs sniffio on the versions we use
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return False
        return True
    try:
        return sniffio.current_async_library() == "asyncio"
    except sniffio.AsyncLibraryNotFoundError:
        return False


async def connect_fast(
    host: str, port: int, *, ssl_context: ssl.SSLContext | None = None
) -> FastStream:
    """Open a TCP (or TLS) connection as a :class:`FastStream`; raises ``OSError``."""
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(
        lambda: _StreamProtocol(loop),
        host,
        port,
        ssl=ssl_context,
        server_hostname=host if ssl_context is not None else None,
    )
    return FastStream(protocol)


async def listen_protocols(
    made: Callable[[_StreamProtocol], None],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None,
    unix_path: str | None,
    backlog: int,
    edge: str,
) -> tuple[asyncio.AbstractServer, int | str]:
    """Listen on TCP ``host:port`` or on the Unix socket ``unix_path``, each accepted socket a
    :class:`_StreamProtocol` that calls ``made``; the server and where it listens (the bound
    port, or the path), logged with ``edge``'s name."""
    loop = asyncio.get_running_loop()

    def factory() -> _StreamProtocol:
        return _StreamProtocol(loop, made)

    if unix_path is not None:
        server = await loop.create_unix_server(factory, unix_path, backlog=backlog)
        logger.info("data plane listening on unix:%s (%s)", unix_path, edge)
        return server, unix_path
    server = await loop.create_server(
        factory, host, port, ssl=ssl_context, reuse_address=True, backlog=backlog
    )
    bound = next(
        s.getsockname()[1] for s in server.sockets if s.family in (socket.AF_INET, socket.AF_INET6)
    )
    logger.info(
        "data plane listening on %s:%d%s (%s)",
        host,
        bound,
        " (TLS)" if ssl_context is not None else "",
        edge,
    )
    return server, int(bound)


async def serve_fast(
    host: str,
    port: int,
    handler: Callable[[FastStream], Coroutine[Any, Any, None]],
    *,
    ssl_context: ssl.SSLContext | None = None,
    unix_path: str | None = None,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    backlog: int = 1024,
) -> None:
    """Accept connections and run ``handler`` for each, until cancelled.

    TCP on ``host:port`` (``task_status`` gets the bound port), or a Unix socket at
    ``unix_path`` (``task_status`` gets the path). ``backlog`` is also how many connections
    asyncio accepts in one go (the descriptors taken before a handler can refuse one).
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def made(protocol: _StreamProtocol) -> None:
        task = loop.create_task(handler(FastStream(protocol)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server, where = await listen_protocols(
        made,
        host,
        port,
        ssl_context=ssl_context,
        unix_path=unix_path,
        backlog=backlog,
        edge="asyncio protocol edge",
    )
    try:
        task_status.started(where)
        await anyio.sleep_forever()
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        with anyio.CancelScope(shield=True):
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await server.wait_closed()
