"""One client connection of the reverse proxy: the anyio I/O edge around two parsers.

Theory of operation (the connection lifecycle):

    read request head ──(timeout: 408/close; bad: 400/431/501 + close)──▶ check + route
      │ no route: 404 (keep-alive when the body was fully read)
      ▼
    take a backend connection (pool) ──(refused: 502, timeout: 504)──▶ send head + buffered body
      │                                      (one write; a body still arriving is pumped by a
      ▼                                       second task, with back-pressure)
    read response head ──(reset: 502, timeout: 504 + close; a reused pooled connection is
      │                   retried once when nothing came back and the request was still in hand)
      ├─ 101 to a WebSocket upgrade: send 101, then relay raw bytes until either side closes
      ▼
    stream the response: each read from the backend becomes one write to the client; a backend
    failure after the head was sent closes the client connection (the client sees a truncated
    response, never a hang)
      ▼
    request and response both complete: backend connection back to the pool, next request
    (pipelined requests are answered in order: the request parser pauses until
    ``start_next_cycle``)

Timeouts: a connection sets ``deadline`` (and ``phase``: idle, header or backend) while it waits;
the listener's :func:`watchdog` cancels the connection's scope once the deadline has passed, and
the connection then answers 408 or 504 (as the phase calls for) and closes.

This module owns sockets, timeouts and tasks. What a request may contain and which headers are
forwarded is decided by the pure functions of :mod:`._proxy_headers`; the parsers of
:mod:`._http` (h11 or httptools, ``ProxySettings.parser``) frame what comes in, :mod:`._wire`
serialises what goes out (the response to the client is re-framed: a backend body without a
length goes to an HTTP/1.1 client chunked, to an HTTP/1.0 client delimited by closing).
The routing table is read once per request: a request routed before a table swap finishes on the
backend it was routed to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol
from urllib.parse import quote

import anyio
import anyio.abc

from ._activity import Activity
from ._backend import BackendConnection, BackendPool, fetch
from ._config import ServiceSpec
from ._errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
)
from ._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    ParseError,
    RequestEvent,
    RequestHead,
    RequestParser,
    ResponseHead,
    parser_classes,
)
from ._metrics import Metrics
from ._proxy_headers import (
    PreparedRequest,
    Rejection,
    backend_headers,
    prepare_request,
    response_headers,
    trailer_fields,
)
from ._settings import ProxySettings
from ._wire import (
    UNTIL_CLOSE,
    body_bytes,
    chunk,
    client_framing,
    client_response_head,
    end_bytes,
    last_chunk,
    reason,
    request_head,
    response_head,
)
from ._ws import relay

logger = logging.getLogger("eventproxy_dataplane.proxy")
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_TRANSPORT_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_NEVER = float("inf")
# what a connection is waiting for when its deadline passes
_IDLE, _HEADER, _BACKEND = 0, 1, 2
# how much of the current response went to the client
_NOTHING, _HEAD_SENT, _DONE = 0, 1, 2
_BODIES = {
    404: b"404 page not found\n",
    502: b"502 Bad Gateway\n",
    503: b"503 Service Unavailable\n",
    504: b"504 Gateway Timeout\n",
}
_ERROR_TARGET_STATUSES = frozenset({404, 502, 503, 504})
_TEXT = b"text/plain; charset=utf-8"


class RouteLike(Protocol):
    """What a routing-table lookup returns."""

    @property
    def router(self) -> str: ...

    @property
    def service(self) -> ServiceSpec: ...


class TableLike(Protocol):
    """What the proxy needs of a routing table."""

    def lookup(self, host: str | None, target: bytes) -> RouteLike | None: ...


class EmptyTable:
    """A table without routes: every request gets 404."""

    def lookup(self, host: str | None, target: bytes) -> RouteLike | None:
        return None


class ProxyState:
    """What every connection of one data plane shares."""

    __slots__ = (
        "activity",
        "clock",
        "connections",
        "metrics",
        "new_request_parser",
        "pool",
        "round_robin",
        "settings",
        "table",
    )

    def __init__(self, table: TableLike, settings: ProxySettings) -> None:
        self.table = table
        self.settings = settings
        self.pool = BackendPool(settings)
        self.metrics = Metrics()
        self.activity = Activity(settings.activity_interval)
        self.round_robin: dict[str, int] = {}
        self.connections: set[ClientConnection] = set()
        self.new_request_parser = parser_classes(settings.parser)[0]
        # the event loop's clock (what cancel-scope deadlines use); set_clock() picks a cheap one
        self.clock: Callable[[], float] = anyio.current_time

    def set_clock(self) -> None:
        """Use the running loop's clock directly (anyio.current_time looks the loop up)."""
        try:
            import sniffio

            library = sniffio.current_async_library()
        except Exception:
            return
        if library == "asyncio":
            import asyncio

            self.clock = asyncio.get_running_loop().time
        elif library == "trio":
            import trio

            self.clock = trio.current_time

    def pick_server(self, service: ServiceSpec) -> str | None:
        servers = service.servers
        if len(servers) == 1:
            return servers[0].url
        if not servers:
            return None
        n = self.round_robin.get(service.name, 0)
        self.round_robin[service.name] = n + 1
        return servers[n % len(servers)].url


class _CloseClient(Exception):
    """Stop serving this client connection now (it failed, or a response cannot be finished)."""


class _Retry(Exception):
    """A reused pooled connection failed before any response: try once more on a new one."""


class _RequestBodyError(Exception):
    """The client's request body was malformed or cut short (``status``: what to answer)."""

    status = 400


class _BodyTooLarge(_RequestBodyError):
    """A chunked request body grew past ``max_body_bytes``."""

    status = 413


def _generic(status: int) -> bytes:
    return b"%d %s\n" % (status, reason(status) or b"Error")


class ClientConnection:
    """Serves one accepted client stream until it closes, fails, or times out."""

    __slots__ = (
        "body_budget",
        "client_11",
        "client_ip",
        "close_after",
        "deadline",
        "head",
        "parser",
        "phase",
        "proto",
        "read_size",
        "request",
        "request_done",
        "router",
        "scope",
        "seen",
        "sent",
        "settings",
        "state",
        "status",
        "stream",
        "target",
        "trusted",
        "upgrade",
    )

    def __init__(
        self,
        state: ProxyState,
        stream: anyio.abc.ByteStream,
        *,
        client_ip: bytes | None,
        tls: bool,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.stream = stream
        self.client_ip = client_ip
        self.proto = b"https" if tls else b"http"
        self.trusted = state.settings.trusts(client_ip)  # keep its X-Forwarded-* headers
        self.read_size = state.settings.read_size
        self.parser: RequestParser = state.new_request_parser(state.settings.max_header_bytes)
        self.head = False
        self.target = b""
        self.router = ""  # the current request's router ("" before routing / without a route)
        self.status = 0  # the status sent for the current request (0: none yet)
        self.request: RequestHead | None = None
        self.request_done = False  # the current request's EndOfMessage was read
        self.client_11 = True  # the current request is HTTP/1.1 (else 1.0)
        self.sent = _NOTHING  # how much of the current response went out
        self.close_after = False  # close the connection once the current response is out
        # Timeouts: the listener's watchdog cancels ``scope`` once ``deadline`` (on the loop's
        # clock) has passed; ``phase`` says what was awaited. Setting a deadline is two
        # attribute writes instead of a cancel scope and a timer per wait.
        self.deadline = _NEVER
        self.phase = _IDLE
        self.seen = False  # bytes of the current request head have arrived
        self.scope = anyio.CancelScope()
        # bytes a chunked request body may still have (None: no limit or not chunked)
        self.body_budget: int | None = None
        # the current request asked for a WebSocket upgrade: any answer but 101 then closes
        # the connection (docs/dataplane.md, "WebSocket")
        self.upgrade = False

    # -- the connection loop ---------------------------------------------------------------

    async def run(self) -> None:
        state = self.state
        metrics = state.metrics
        metrics.connections += 1
        state.connections.add(self)
        try:
            with self.scope:
                await self._serve()
            if self.scope.cancelled_caught:
                await self._timed_out()
        except _CloseClient:
            pass
        except Exception:
            # A bug must cost one connection, never the listener (or the hub it runs in).
            logger.exception("unexpected error while serving a client connection")
        finally:
            state.connections.discard(self)
            metrics.connections -= 1
            await anyio.aclose_forcefully(self.stream)

    async def _serve(self) -> None:
        metrics = self.state.metrics
        first = True
        parser = self.parser
        while True:
            self.router = ""
            self.status = 0
            self.sent = _NOTHING
            self.close_after = False
            self.request_done = False
            try:
                request = await self._read_request(first)
                if request is None:
                    return
                first = False
                await self._handle(request)
            finally:
                if self.status:
                    metrics.count_response(self.router, self.status)
            if (
                self.sent != _DONE
                or not self.request_done
                or self.close_after
                or not request.keep_alive
            ):
                return
            parser.start_next_cycle()

    async def _timed_out(self) -> None:
        """The watchdog fired: answer what the phase calls for, then the connection closes."""
        phase = self.phase
        if phase == _HEADER and self.seen:
            await self._send_simple(408, _generic(408), close=True)
            self.state.metrics.count_response(self.router, 408)
        elif phase == _BACKEND:
            self.state.metrics.count_backend_error(self.router, "timeout")
            if self.sent == _NOTHING:
                await self._send_error(504, close=True)
                self.state.metrics.count_response(self.router, 504)

    async def _recv(self) -> bytes:
        try:
            return await self.stream.receive(self.read_size)
        except anyio.EndOfStream:
            return b""
        except _TRANSPORT_ERRORS:
            raise _CloseClient from None

    async def _send(self, data: bytes) -> None:
        try:
            await self.stream.send(data)
        except _TRANSPORT_ERRORS:
            raise _CloseClient from None

    async def _read_request(self, first: bool) -> RequestHead | None:
        parser = self.parser
        self.request = None
        try:
            event = parser.next_event()
            if event is NEED_DATA and not parser.eof:
                event = await self._read_request_slowly(first)
        except ParseError as exc:
            # The detail goes to the debug log only: it quotes what the client sent.
            logger.debug("refusing a malformed request: %s", exc.reason)
            await self._send_simple(exc.status, _generic(exc.status), close=True)
            return None
        if type(event) is RequestHead:
            return event
        return None

    async def _read_request_slowly(self, first: bool) -> RequestEvent:
        """Read until a request head is complete, under the header and idle timeouts."""
        settings = self.settings
        parser = self.parser
        clock = self.state.clock
        timeout = settings.header_timeout if first else settings.idle_timeout
        self.phase = _HEADER if first else _IDLE
        self.seen = False
        self.deadline = clock() + timeout if timeout is not None else _NEVER
        while True:
            data = await self._recv()
            if data and not self.seen:
                self.seen = True
                if not first:
                    self.phase = _HEADER
                    timeout = settings.header_timeout
                    self.deadline = clock() + timeout if timeout is not None else _NEVER
            parser.feed(data)
            event = parser.next_event()
            if event is not NEED_DATA or parser.eof:
                self.deadline = _NEVER
                return event

    # -- one request -----------------------------------------------------------------------

    async def _handle(self, request: RequestHead) -> None:
        state = self.state
        parser = self.parser
        self.upgrade = False
        self.request = request
        self.head = request.method == b"HEAD"
        self.target = request.target
        self.client_11 = request.http_version == b"1.1"
        settings = self.settings
        prepared = prepare_request(
            request.target,
            request.headers,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            trust_forwarded=self.trusted,
            max_body_bytes=settings.max_body_bytes,
        )
        if type(prepared) is Rejection:
            await self._send_simple(prepared.status, f"{prepared.reason}\n".encode(), close=True)
            return
        assert type(prepared) is PreparedRequest
        self.upgrade = prepared.websocket
        host = prepared.host.decode("latin-1") if prepared.host is not None else None
        route = state.table.lookup(host, prepared.path)
        # Take what the client already sent of the body: one write to the backend, and framing
        # errors (a bad chunk size) are caught before any backend sees the request.
        events: list[Body | EndOfMessage] = []
        try:
            while True:
                event = parser.next_event()
                if event is NEED_DATA or event is PAUSED:
                    break
                if type(event) is EndOfMessage:
                    events.append(event)
                    self.request_done = True
                    break
                if type(event) is Body:
                    events.append(event)
        except ParseError as exc:
            logger.debug("refusing a malformed request body: %s", exc.reason)
            await self._send_simple(exc.status, _generic(exc.status), close=True)
            return
        complete = self.request_done
        self.body_budget = None
        if prepared.chunked and settings.max_body_bytes is not None:
            budget = settings.max_body_bytes
            for event in events:
                if type(event) is Body:
                    budget -= len(event.data)
            if budget < 0:
                await self._send_simple(413, _generic(413), close=True)
                return
            self.body_budget = budget
        if route is None:
            await self._send_error(404, close=not complete)
            return
        router = self.router = route.router
        state.activity.touch(router)
        state.metrics.in_flight += 1
        try:
            await self._forward(route, request, prepared, events, complete)
        finally:
            state.metrics.in_flight -= 1
            state.activity.touch(router)

    async def _forward(
        self,
        route: RouteLike,
        request: RequestHead,
        prepared: PreparedRequest,
        events: list[Body | EndOfMessage],
        complete: bool,
    ) -> int:
        """Send the request to a backend of the route and relay the answer; the status sent."""
        state = self.state
        router = route.router
        service = route.service
        url = state.pick_server(service)
        if url is None:
            state.metrics.count_backend_error(router, "no_server")
            return await self._backend_failed(503)
        try:
            address = state.pool.address(url)
        except BackendError:
            state.metrics.count_backend_error(router, "bad_url")
            return await self._backend_failed(502)
        headers = backend_headers(
            prepared,
            backend_host=(
                None
                if service.pass_host_header and prepared.host is not None
                else address.netloc  # also for an HTTP/1.0 request without Host
            ),
            client_ip=self.client_ip,
            proto=self.proto,
        )
        chunked = prepared.chunked
        parts = [request_head(request.method, prepared.path, headers)]
        for event in events:
            parts.append(_request_bytes(event, chunked))
        data = b"".join(parts)
        websocket = prepared.websocket and complete
        for attempt in (0, 1):
            try:
                backend, reused = await state.pool.acquire(url)
            except BackendError as exc:
                state.metrics.count_backend_error(router, _kind(exc))
                return await self._backend_failed(exc.status)
            retry_ok = reused and complete and attempt == 0 and request.method in _IDEMPOTENT
            try:
                status = await self._exchange(
                    backend, router, request.method, data, complete, websocket, retry_ok, chunked
                )
            except _Retry:
                await backend.aclose()
                continue
            except BaseException:
                await backend.aclose()
                raise
            await state.pool.release(backend)
            return status
        raise AssertionError("unreachable")  # pragma: no cover

    async def _exchange(
        self,
        backend: BackendConnection,
        router: str,
        method: bytes,
        data: bytes,
        complete: bool,
        websocket: bool,
        retry_ok: bool,
        chunked: bool,
    ) -> int:
        state = self.state
        try:
            backend.start(method, upgrade=websocket, request_sent=complete)
            await backend.send(data)
            if complete:
                return await self._relay_response(backend, router, websocket, retry_ok)
            return await self._relay_with_body(backend, router, chunked)
        except BackendError as exc:
            if retry_ok and not isinstance(exc, BackendTimeoutError):
                raise _Retry from None
            state.metrics.count_backend_error(router, _kind(exc))
            return await self._backend_failed(exc.status)

    async def _relay_with_body(self, backend: BackendConnection, router: str, chunked: bool) -> int:
        """Relay the response while a second task streams the rest of the request body."""
        failure: list[BaseException] = []
        status = 0
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                try:
                    await self._pump_request_body(backend, chunked)
                except (_RequestBodyError, _CloseClient, BackendError) as exc:
                    failure.append(exc)
                    tg.cancel_scope.cancel()

            tg.start_soon(pump)
            try:
                status = await self._relay_response(backend, router, False, False)
            except (_CloseClient, BackendError) as exc:
                failure.append(exc)
            tg.cancel_scope.cancel()
        if failure:
            first = failure[0]
            if isinstance(first, _RequestBodyError):
                logger.debug("request body failed: %s", first)
                await self._send_simple(first.status, _generic(first.status), close=True)
                raise _CloseClient from None
            raise first
        return status

    async def _pump_request_body(self, backend: BackendConnection, chunked: bool) -> None:
        parser = self.parser
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                raise _RequestBodyError(exc.reason) from None
            if event is NEED_DATA:
                if parser.eof:
                    raise _RequestBodyError("the client closed inside the request body")
                parser.feed(await self._recv())
                continue
            if type(event) is Body:
                if self.body_budget is not None:
                    self.body_budget -= len(event.data)
                    if self.body_budget < 0:
                        raise _BodyTooLarge("chunked request body above max_body_bytes")
                await backend.send(chunk(event.data) if chunked else event.data)
            elif type(event) is EndOfMessage:
                self.request_done = True
                await backend.send(_request_bytes(event, chunked))
                backend.request_sent = True
                return
            else:
                return

    async def _relay_response(
        self, backend: BackendConnection, router: str, websocket: bool, retry_ok: bool
    ) -> int:
        settings = self.settings
        timeout = settings.backend_response_timeout
        if timeout is not None:
            self.phase = _BACKEND
            self.deadline = self.state.clock() + timeout
        try:
            event = await backend.next_event()
            while type(event) is ResponseHead and event.status < 200:
                if event.status == 101:
                    if websocket:
                        break
                    raise BackendProtocolError(
                        f"backend {backend.address.url} switched protocols unasked"
                    )
                if self.client_11:
                    await self._send(
                        response_head(event.status, event.reason, response_headers(event.headers))
                    )
                event = await backend.next_event()
        finally:
            self.deadline = _NEVER
        if type(event) is not ResponseHead:
            raise BackendProtocolError(f"backend {backend.address.url} sent {event!r}")
        if event.status == 101:
            return await self._switch_to_websocket(backend, router, event)
        status = self.status = event.status
        framing = client_framing(
            status=status,
            head_request=self.head,
            content_length=event.content_length,
            client_11=self.client_11,
        )
        request = self.request
        # the client will not (or cannot) reuse this connection
        close = self.upgrade or (request is not None and not request.keep_alive)
        if close or framing == UNTIL_CLOSE:
            self.close_after = True
        parts = [
            client_response_head(
                status,
                event.reason,
                response_headers(event.headers),
                framing=framing,
                close=close,
            )
        ]
        self.sent = _HEAD_SENT
        parser = backend.parser
        while True:
            broken = finished = False
            while True:
                try:
                    event2 = parser.next_event()
                except ParseError:
                    broken = True
                    break
                kind = type(event2)
                if kind is Body:
                    parts.append(body_bytes(framing, event2.data))  # type: ignore[union-attr]
                elif kind is EndOfMessage:
                    trailers = event2.trailers  # type: ignore[union-attr]
                    parts.append(end_bytes(framing, trailer_fields(trailers) if trailers else ()))
                    finished = True
                    break
                else:
                    broken = event2 is not NEED_DATA or parser.eof
                    break
            await self._send(parts[0] if len(parts) == 1 else b"".join(parts))
            if finished:
                self.sent = _DONE
                backend.response_done = event.keep_alive
                return status
            if broken:
                self.state.metrics.count_backend_error(router, "reset")
                raise _CloseClient
            parts = []
            try:
                data = await backend.stream.receive(self.read_size)
            except anyio.EndOfStream:
                data = b""
            except _TRANSPORT_ERRORS:
                self.state.metrics.count_backend_error(router, "reset")
                raise _CloseClient from None
            parser.feed(data)

    async def _switch_to_websocket(
        self, backend: BackendConnection, router: str, event: ResponseHead
    ) -> int:
        self.status = 101
        self.sent = _DONE
        await self._send(
            response_head(101, event.reason, response_headers(event.headers, switching=True))
        )
        activity = self.state.activity
        await relay(
            self.stream,
            backend.stream,
            client_pending=self.parser.take_trailing(),
            backend_pending=backend.parser.take_trailing(),
            on_traffic=lambda: activity.touch(router),
            read_size=self.read_size,
        )
        raise _CloseClient

    # -- errors ----------------------------------------------------------------------------

    async def _backend_failed(self, status: int) -> int:
        """Answer ``status`` for a backend failure when no response has started yet."""
        if self.sent != _NOTHING:
            raise _CloseClient
        if status == 502:
            status = self.settings.backend_down_status
        await self._send_error(status, close=not self.request_done)
        return status

    async def _send_error(self, status: int, *, close: bool) -> None:
        settings = self.settings
        content_type = _TEXT
        body = _BODIES.get(status, b"")
        if settings.error_target is not None and status in _ERROR_TARGET_STATUSES:
            url = (
                f"{settings.error_target.rstrip('/')}/{status}"
                f"?url={quote(self.target, safe=_URI_COMPONENT_SAFE)}"
            )
            try:
                with anyio.fail_after(settings.error_fetch_timeout):
                    page = await fetch(self.state.pool, url)
            except (BackendError, TimeoutError):
                pass
            else:
                body = page.body
                content_type = page.content_type or b"text/html; charset=utf-8"
        await self._send_simple(status, body, close=close, content_type=content_type)

    async def _send_simple(
        self, status: int, body: bytes, *, close: bool, content_type: bytes = _TEXT
    ) -> None:
        if self.sent != _NOTHING:
            raise _CloseClient
        self.status = status
        self.sent = _DONE
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        request = self.request
        if close or self.upgrade or request is None or not request.keep_alive:
            headers.append((b"Connection", b"close"))
            self.close_after = True
        head = response_head(status, reason(status), headers)
        await self._send(head if self.head or not body else head + body)


# encodeURIComponent's unescaped set, as configurable-http-proxy builds its error-target URL.
_URI_COMPONENT_SAFE = "!'()*"


def _request_bytes(event: Body | EndOfMessage, chunked: bool) -> bytes:
    """A piece of the request body for the backend, framed as the client framed it; the end
    of a chunked body carries only the trailer fields allowed there."""
    if type(event) is Body:
        return chunk(event.data) if chunked else event.data
    if not chunked:
        return b""
    assert type(event) is EndOfMessage
    return last_chunk(trailer_fields(event.trailers))


def _kind(exc: BackendError) -> str:
    name = type(exc).__name__
    return {
        "BackendConnectError": "connect",
        "BackendTimeoutError": "timeout",
        "BackendProtocolError": "protocol",
    }.get(name, "other")


def watchdog_tick(settings: ProxySettings) -> float:
    """How often the watchdog looks at deadlines: a quarter of the shortest timeout, in
    [0.01 s, 1 s] (so a timeout fires at most that much late)."""
    timeouts = [
        t
        for t in (settings.header_timeout, settings.idle_timeout, settings.backend_response_timeout)
        if t is not None
    ]
    if not timeouts:
        return 1.0
    return min(1.0, max(0.01, min(timeouts) / 4))


async def watchdog(state: ProxyState) -> None:
    """Cancel every connection whose deadline has passed; runs until cancelled."""
    tick = watchdog_tick(state.settings)
    connections = state.connections
    while True:
        await anyio.sleep(tick)
        now = state.clock()
        for conn in [c for c in connections if c.deadline <= now]:
            conn.deadline = _NEVER
            conn.scope.cancel()
