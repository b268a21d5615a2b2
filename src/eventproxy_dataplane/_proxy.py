"""One client connection of the reverse proxy: the anyio I/O edge around two h11 machines.

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
    both h11 machines DONE: backend connection back to the pool, next request (pipelined
    requests are answered in order because h11 pauses until ``start_next_cycle``)

Timeouts: a connection sets ``deadline`` (and ``phase``: idle, header or backend) while it waits;
the listener's :func:`watchdog` cancels the connection's scope once the deadline has passed, and
the connection then answers 408 or 504 (as the phase calls for) and closes.

This module owns sockets, timeouts and tasks. What a request may contain and which headers are
forwarded is decided by the pure functions of :mod:`._proxy_headers`; h11 does the framing.
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
import h11

from ._activity import Activity
from ._backend import BackendConnection, BackendPool, fetch
from ._config import ServiceSpec
from ._errors import (
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
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
from ._ws import relay

logger = logging.getLogger("eventproxy_dataplane.proxy")
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
_TRANSPORT_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)
_EOM = h11.EndOfMessage()
_NEVER = float("inf")
# what a connection is waiting for when its deadline passes
_IDLE, _HEADER, _BACKEND = 0, 1, 2
_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    505: b"HTTP Version Not Supported",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}
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


def _status_line_reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


def _generic(status: int) -> bytes:
    return b"%d %s\n" % (status, _REASONS.get(status, b"Error"))


class ClientConnection:
    """Serves one accepted client stream until it closes, fails, or times out."""

    __slots__ = (
        "body_budget",
        "client_ip",
        "conn",
        "deadline",
        "head",
        "phase",
        "proto",
        "read_size",
        "router",
        "scope",
        "seen",
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
        self.conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=state.settings.max_header_bytes
        )
        self.head = False
        self.target = b""
        self.router = ""  # the current request's router ("" before routing / without a route)
        self.status = 0  # the status sent for the current request (0: none yet)
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
        conn = self.conn
        while True:
            self.router = ""
            self.status = 0
            try:
                request = await self._read_request(first)
                if request is None:
                    return
                first = False
                await self._handle(request)
            finally:
                if self.status:
                    metrics.count_response(self.router, self.status)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _timed_out(self) -> None:
        """The watchdog fired: answer what the phase calls for, then the connection closes."""
        phase = self.phase
        if phase == _HEADER and self.seen:
            await self._send_simple(408, _generic(408), close=True)
            self.state.metrics.count_response(self.router, 408)
        elif phase == _BACKEND:
            self.state.metrics.count_backend_error(self.router, "timeout")
            if self.conn.our_state is h11.SEND_RESPONSE:
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

    async def _read_request(self, first: bool) -> h11.Request | None:
        conn = self.conn
        try:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                event = await self._read_request_slowly(first)
        except h11.RemoteProtocolError as exc:
            # The detail goes to the debug log only: it quotes what the client sent.
            logger.debug("refusing a malformed request: %s", exc)
            await self._send_simple(
                exc.error_status_hint, _generic(exc.error_status_hint), close=True
            )
            return None
        if type(event) is h11.Request:
            return event
        return None

    async def _read_request_slowly(
        self, first: bool
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        """Read until a request head is complete, under the header and idle timeouts."""
        settings = self.settings
        conn = self.conn
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
            conn.receive_data(data)
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                self.deadline = _NEVER
                return event

    # -- one request -----------------------------------------------------------------------

    async def _handle(self, request: h11.Request) -> None:
        state = self.state
        conn = self.conn
        self.upgrade = False
        self.head = request.method == b"HEAD"
        self.target = request.target
        settings = self.settings
        if request.http_version[0] != 49:  # not 1.x: h11 reads any digit.digit (HTTP/2.0, 0.9)
            await self._send_simple(505, _generic(505), close=True)
            return
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
        events: list[h11.Event] = []
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if type(event) is h11.EndOfMessage:
                    events.append(_request_eom(event))
                    break
                events.append(event)  # type: ignore[arg-type]
        except h11.RemoteProtocolError as exc:
            logger.debug("refusing a malformed request body: %s", exc)
            await self._send_simple(400, _generic(400), close=True)
            return
        complete = conn.their_state is not h11.SEND_BODY
        self.body_budget = None
        if prepared.chunked and settings.max_body_bytes is not None:
            budget = settings.max_body_bytes
            for event in events:
                if type(event) is h11.Data:
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
        request: h11.Request,
        prepared: PreparedRequest,
        events: list[h11.Event],
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
        backend_request = h11.Request(
            method=request.method,
            target=prepared.path,
            headers=backend_headers(
                prepared,
                backend_host=(
                    None
                    if service.pass_host_header and prepared.host is not None
                    else address.netloc  # also for an HTTP/1.0 request without Host
                ),
                client_ip=self.client_ip,
                proto=self.proto,
            ),
            # h11 validated every byte of it on the way in, and what we add is ours (no
            # client bytes): skip h11's per-field regex validation on the hot path
            _parsed=True,
        )
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
                    backend, router, backend_request, events, complete, websocket, retry_ok
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
        backend_request: h11.Request,
        events: list[h11.Event],
        complete: bool,
        websocket: bool,
        retry_ok: bool,
    ) -> int:
        state = self.state
        h = backend.h11
        try:
            parts = [h.send(backend_request) or b""]
            for event in events:
                parts.append(h.send(event) or b"")
            await backend.send(b"".join(parts))
            if complete:
                return await self._relay_response(backend, router, websocket, retry_ok)
            return await self._relay_with_body(backend, router)
        except BackendError as exc:
            if retry_ok and not isinstance(exc, BackendTimeoutError):
                raise _Retry from None
            state.metrics.count_backend_error(router, _kind(exc))
            return await self._backend_failed(exc.status)

    async def _relay_with_body(self, backend: BackendConnection, router: str) -> int:
        """Relay the response while a second task streams the rest of the request body."""
        failure: list[BaseException] = []
        status = 0
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                try:
                    await self._pump_request_body(backend)
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

    async def _pump_request_body(self, backend: BackendConnection) -> None:
        conn = self.conn
        h = backend.h11
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _RequestBodyError(str(exc)) from None
            if event is h11.NEED_DATA:
                conn.receive_data(await self._recv())
                continue
            if type(event) is h11.Data:
                if self.body_budget is not None:
                    self.body_budget -= len(event.data)
                    if self.body_budget < 0:
                        raise _BodyTooLarge("chunked request body above max_body_bytes")
                await backend.send(h.send(event) or b"")
            elif type(event) is h11.EndOfMessage:
                await backend.send(h.send(_request_eom(event)) or b"")
                return
            else:
                return

    async def _relay_response(
        self, backend: BackendConnection, router: str, websocket: bool, retry_ok: bool
    ) -> int:
        conn = self.conn
        settings = self.settings
        timeout = settings.backend_response_timeout
        if timeout is not None:
            self.phase = _BACKEND
            self.deadline = self.state.clock() + timeout
        try:
            event = await backend.next_event()
            while type(event) is h11.InformationalResponse:
                if event.status_code == 101 and websocket:
                    break
                await self._send(
                    conn.send(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=response_headers(event.headers),
                            reason=event.reason,
                        )
                    )
                    or b""
                )
                event = await backend.next_event()
        finally:
            self.deadline = _NEVER
        if type(event) is h11.InformationalResponse:
            return await self._switch_to_websocket(backend, router, event)
        if type(event) is not h11.Response:
            raise BackendProtocolError(f"backend {backend.address.url} sent {event!r}")
        status = self.status = event.status_code
        headers = response_headers(event.headers)
        if self.upgrade:  # the upgrade was refused: the client will not reuse this connection
            headers.append((b"connection", b"close"))
        head = conn.send(
            h11.Response(
                status_code=status,
                headers=headers,
                reason=event.reason,
                _parsed=True,  # validated by h11 when it parsed the backend's response
            )
        )
        parts = [head or b""]
        h = backend.h11
        while True:
            broken = finished = False
            while True:
                try:
                    event2 = h.next_event()
                except h11.RemoteProtocolError:
                    broken = True
                    break
                if event2 is h11.NEED_DATA:
                    break
                kind = type(event2)
                if kind is h11.Data:
                    parts.append(conn.send(event2) or b"")  # type: ignore[arg-type]
                elif kind is h11.EndOfMessage:
                    eom = self._response_eom(event2)  # type: ignore[arg-type]
                    parts.append(conn.send(eom) or b"")
                    finished = True
                    break
                else:
                    broken = True
                    break
            await self._send(parts[0] if len(parts) == 1 else b"".join(parts))
            if finished:
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
            h.receive_data(data)

    def _response_eom(self, event: h11.EndOfMessage) -> h11.EndOfMessage:
        """The end of a response for the client: the backend's allowed trailer fields when the
        client's response is chunked (h11 frames an HTTP/1.0 client's response by closing)."""
        if not event.headers:
            return _EOM
        fields = trailer_fields(event.headers)
        if not fields or self.conn.their_http_version != b"1.1":
            return _EOM
        return h11.EndOfMessage(headers=fields, _parsed=True)

    async def _switch_to_websocket(
        self, backend: BackendConnection, router: str, event: h11.InformationalResponse
    ) -> int:
        conn = self.conn
        self.status = 101
        await self._send(
            conn.send(
                h11.InformationalResponse(
                    status_code=101,
                    headers=response_headers(event.headers, switching=True),
                    reason=event.reason,
                )
            )
            or b""
        )
        activity = self.state.activity
        await relay(
            self.stream,
            backend.stream,
            client_pending=conn.trailing_data[0],
            backend_pending=backend.h11.trailing_data[0],
            on_traffic=lambda: activity.touch(router),
            read_size=self.read_size,
        )
        raise _CloseClient

    # -- errors ----------------------------------------------------------------------------

    async def _backend_failed(self, status: int) -> int:
        """Answer ``status`` for a backend failure when no response has started yet."""
        conn = self.conn
        if conn.our_state is not h11.SEND_RESPONSE:
            raise _CloseClient
        if status == 502:
            status = self.settings.backend_down_status
        await self._send_error(status, close=conn.their_state is h11.SEND_BODY)
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
        conn = self.conn
        if conn.our_state is not h11.IDLE and conn.our_state is not h11.SEND_RESPONSE:
            raise _CloseClient
        self.status = status
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        if close or self.upgrade:
            headers.append((b"connection", b"close"))
        try:
            data = conn.send(
                h11.Response(
                    status_code=status, headers=headers, reason=_status_line_reason(status)
                )
            )
            parts = [data or b""]
            if body and not self.head:
                parts.append(conn.send(h11.Data(data=body)) or b"")
            parts.append(conn.send(_EOM) or b"")
        except h11.LocalProtocolError:
            raise _CloseClient from None
        await self._send(b"".join(parts))


# encodeURIComponent's unescaped set, as configurable-http-proxy builds its error-target URL.
_URI_COMPONENT_SAFE = "!'()*"


def _request_eom(event: h11.EndOfMessage) -> h11.EndOfMessage:
    """The end of a request for the backend: only the trailer fields allowed there."""
    if not event.headers:
        return event
    return h11.EndOfMessage(headers=trailer_fields(event.headers), _parsed=True)


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
