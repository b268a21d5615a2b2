"""The sans-IO connection core: one client connection of the reverse proxy, events in, actions out.

Theory of operation. A :class:`ClientCore` is the whole proxy logic of one client connection
with no I/O in it: no sockets, no awaits, no tasks, no timers. An *edge* (the anyio driver of
:mod:`._proxy`, or :class:`eventproxy_dataplane.testing.MockEdge`) owns the sockets, the backend
pool and the clock's alarms; it tells the core what happened by calling one of its input
methods, and every input method returns the list of actions the edge must now carry out, in
order:

    inputs (ClientCore methods)           actions out (what the edge does)
    start()                                SendClient(data)       write to the client
    client_data(data)   (b"": EOF)         SendBackend(data)      write to the backend connection
    client_failed()     (reset)            AcquireBackend(url)    take a connection (pooled or new)
    backend_acquired(parser, reused)       ReleaseBackend(reusable) give it back (pool or close)
    backend_unavailable(error)             FetchErrorPage(url)    GET the error_target page
    backend_data(data)  (b"": EOF)         RelayWebSocket(...)    join the two sockets, then close
    backend_failed(error)                  CLOSE_CLIENT           close the client connection
    error_page(body, content_type)
    deadline_passed()
    closed()            (the edge is done; bookkeeping only)

Between inputs the edge reads three attributes: ``read_client`` and ``read_backend`` (whether
the core wants bytes from that side now: an edge that cannot read stops reading, which is the
back-pressure), and ``deadline`` (on the context's clock; ``inf``: none). When the clock passes
``deadline`` the edge calls :meth:`ClientCore.deadline_passed`. ``finished`` is true once the
core has nothing more to do (the client is to be closed, or the connection was handed to the
WebSocket relay).

Back-pressure: the core never buffers a body. Each ``client_data``/``backend_data`` call returns
at most one write per direction (what that read completed, framed for the other side); an edge
executes it before it reads again from the same side, so a slow reader on one side stops the
reads on the other.

The lifecycle of one request (the states are ``_HEAD``, ``_ACQUIRE``, ``_EXCHANGE``,
``_FETCH``, ``_CLOSED``):

    _HEAD: read a request head (header timeout; idle timeout between requests: a timeout with
      │    part of a head read answers 408, else just closes; bad bytes: 400/431/501/505, close)
      │  prepare (:mod:`._proxy_headers`: 400/413/431), route, take what arrived of the body
      │  no route: 404 (keep-alive when the body was read whole)
      ▼
    _ACQUIRE: AcquireBackend(url) ──(unavailable: 502/503/504 from the error's status)
      ▼
    _EXCHANGE: SendBackend(head + body so far); until the final response head, the backend
      │  response timeout runs (504). A body still arriving is streamed (read_client and
      │  read_backend both set) with its max_body_bytes budget (413). A reused connection that
      │  fails before anything came back is retried once on a new one (the request was whole
      │  and idempotent). 1xx heads go to an HTTP/1.1 client; a 101 to a WebSocket request is
      │  RelayWebSocket; any other answer to an upgrade request closes after it.
      ▼
    the response is streamed (re-framed by :mod:`._wire`); its end releases the backend
    connection (reusable when both messages were whole and it keeps alive); then the next
    request (pipelined ones wait in the request parser) or close.

Errors the backend causes after the response head went out close the client connection (the
client sees a truncated response, never a hang). ``_FETCH``: an error status in 404/502/503/504
with ``error_target`` set waits for the page (``error_page(None, None)``: use the default).

The core may know: settings, the routing table (read once per request), metrics and activity
(counters, no I/O), the clock (read through the context). It may not know: sockets, the pool's
contents, tasks, or which event loop runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Protocol
from urllib.parse import quote

from ._activity import Activity
from ._config import ServiceSpec
from ._errors import BackendError, BackendProtocolError, BackendTimeoutError
from ._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    ParseError,
    RequestHead,
    RequestParser,
    RequestParserFactory,
    ResponseHead,
    ResponseParser,
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

logger = logging.getLogger("eventproxy_dataplane.proxy")

NEVER: Final = float("inf")
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# what the connection waits for when its deadline passes
_IDLE, _HEADER, _BACKEND = 0, 1, 2
# how much of the current response went to the client
_NOTHING, _HEAD_SENT, _DONE = 0, 1, 2
# the states of a connection (see the module docstring)
_HEAD, _ACQUIRE, _EXCHANGE, _FETCH, _CLOSED = 0, 1, 2, 3, 4
_BODIES = {
    404: b"404 page not found\n",
    502: b"502 Bad Gateway\n",
    503: b"503 Service Unavailable\n",
    504: b"504 Gateway Timeout\n",
}
_ERROR_TARGET_STATUSES = frozenset({404, 502, 503, 504})
_TEXT = b"text/plain; charset=utf-8"
# encodeURIComponent's unescaped set, as configurable-http-proxy builds its error-target URL.
_URI_COMPONENT_SAFE = "!'()*"


# -- actions ---------------------------------------------------------------------------------


class SendClient:
    """Write ``data`` to the client."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"SendClient({self.data!r})"


class SendBackend:
    """Write ``data`` to the backend connection the core holds."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"SendBackend({self.data!r})"


class AcquireBackend:
    """Take a connection to ``url`` (pooled or new), then call ``backend_acquired`` or
    ``backend_unavailable``."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"AcquireBackend({self.url!r})"


class ReleaseBackend:
    """The core is done with its backend connection: pool it when ``reusable``, else close it."""

    __slots__ = ("reusable",)

    def __init__(self, reusable: bool) -> None:
        self.reusable = reusable

    def __repr__(self) -> str:
        return f"ReleaseBackend({self.reusable})"


class FetchErrorPage:
    """``GET url`` (the error_target page), then call ``error_page`` with its body or None."""

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"FetchErrorPage({self.url!r})"


class RelayWebSocket:
    """The backend switched protocols: send ``client_pending`` to the backend and
    ``backend_pending`` to the client, then copy bytes both ways until either side closes,
    touching ``router``'s activity on traffic; then close both (the backend connection is the
    relay's: it is never pooled)."""

    __slots__ = ("backend_pending", "client_pending", "router")

    def __init__(self, client_pending: bytes, backend_pending: bytes, router: str) -> None:
        self.client_pending = client_pending
        self.backend_pending = backend_pending
        self.router = router

    def __repr__(self) -> str:
        return f"RelayWebSocket({self.client_pending!r}, {self.backend_pending!r})"


class CloseClient:
    """Close the client connection (after what was sent is flushed)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSE_CLIENT"


CLOSE_CLIENT: Final = CloseClient()

Action = (
    SendClient
    | SendBackend
    | AcquireBackend
    | ReleaseBackend
    | FetchErrorPage
    | RelayWebSocket
    | CloseClient
)


# -- what connections share ------------------------------------------------------------------


class RouteLike(Protocol):
    """What a routing-table lookup returns."""

    @property
    def router(self) -> str: ...

    @property
    def service(self) -> ServiceSpec: ...


class TableLike(Protocol):
    """What the proxy needs of a routing table."""

    def lookup(self, host: str | None, target: bytes) -> RouteLike | None: ...


class AddressLike(Protocol):
    """What the core needs of a backend server address."""

    @property
    def netloc(self) -> bytes: ...


class EmptyTable:
    """A table without routes: every request gets 404."""

    def lookup(self, host: str | None, target: bytes) -> RouteLike | None:
        return None


def _no_clock() -> float:
    return 0.0


class CoreContext:
    """What every connection core of one data plane shares: table, settings, counters, the
    clock (``clock``: seconds, any origin) and the server-URL parser (``address``: raises
    :class:`BackendError` for a URL that cannot be used)."""

    __slots__ = (
        "activity",
        "address",
        "clock",
        "metrics",
        "new_request_parser",
        "round_robin",
        "settings",
        "table",
    )

    def __init__(
        self,
        table: TableLike,
        settings: ProxySettings,
        *,
        address: Callable[[str], AddressLike],
        clock: Callable[[], float] = _no_clock,
    ) -> None:
        self.table = table
        self.settings = settings
        self.metrics = Metrics()
        self.activity = Activity(settings.activity_interval)
        self.round_robin: dict[str, int] = {}
        self.new_request_parser: RequestParserFactory = parser_classes(settings.parser)[0]
        self.address = address
        self.clock = clock

    def pick_server(self, service: ServiceSpec) -> str | None:
        servers = service.servers
        if len(servers) == 1:
            return servers[0].url
        if not servers:
            return None
        n = self.round_robin.get(service.name, 0)
        self.round_robin[service.name] = n + 1
        return servers[n % len(servers)].url


def _generic(status: int) -> bytes:
    return b"%d %s\n" % (status, reason(status) or b"Error")


def _kind(exc: BackendError) -> str:
    name = type(exc).__name__
    return {
        "BackendConnectError": "connect",
        "BackendTimeoutError": "timeout",
        "BackendProtocolError": "protocol",
    }.get(name, "other")


def _request_bytes(event: Body | EndOfMessage, chunked: bool) -> bytes:
    """A piece of the request body for the backend, framed as the client framed it; the end
    of a chunked body carries only the trailer fields allowed there."""
    if type(event) is Body:
        return chunk(event.data) if chunked else event.data
    if not chunked:
        return b""
    assert type(event) is EndOfMessage
    return last_chunk(trailer_fields(event.trailers))


# -- the core --------------------------------------------------------------------------------


class ClientCore:
    """The proxy logic of one client connection (see the module docstring)."""

    __slots__ = (
        "again",
        "attempt",
        "backend",
        "body_budget",
        "chunked",
        "client_11",
        "client_ip",
        "close_after",
        "counted",
        "ctx",
        "deadline",
        "error_close",
        "error_status",
        "finished",
        "first",
        "framing",
        "head",
        "in_flight",
        "informational",
        "out",
        "parser",
        "phase",
        "proto",
        "read_backend",
        "read_client",
        "request",
        "request_bytes",
        "request_done",
        "request_sent",
        "response",
        "retry_ok",
        "router",
        "seen",
        "sent",
        "settings",
        "started",
        "state",
        "status",
        "target",
        "trusted",
        "upgrade",
        "url",
        "waiting",
        "websocket",
    )

    def __init__(self, ctx: CoreContext, *, client_ip: bytes | None, tls: bool) -> None:
        settings = ctx.settings
        self.ctx = ctx
        self.settings = settings
        self.client_ip = client_ip
        self.proto = b"https" if tls else b"http"
        self.trusted = settings.trusts(client_ip)  # keep its X-Forwarded-* headers
        self.parser: RequestParser = ctx.new_request_parser(settings.max_header_bytes)
        self.out: list[Action] = []
        # what the edge reads between inputs
        self.read_client = False
        self.read_backend = False
        self.deadline = NEVER
        self.finished = False
        self.started = False
        self.state = _HEAD
        self.phase = _IDLE
        self.first = True  # the first request of the connection (header timeout, not idle)
        self.again = False  # a request cycle ended: look at the next one
        self.waiting = False  # the head deadline is running
        self.seen = False  # bytes of the current request head have arrived
        self.backend: ResponseParser | None = None  # the held backend connection's parser
        self.in_flight = False
        self._reset()

    def _reset(self) -> None:
        """Forget the previous request (a new cycle starts)."""
        self.request: RequestHead | None = None
        self.response: ResponseHead | None = None
        self.router = ""  # the current request's router ("" before routing / without one)
        self.status = 0  # the status sent for the current request (0: none yet)
        self.counted = False
        self.sent = _NOTHING
        self.close_after = False
        self.request_done = False  # the request's EndOfMessage was read
        self.request_sent = False  # ... and went to the backend
        self.head = False
        self.target = b""
        self.client_11 = True
        self.upgrade = False  # any answer but 101 closes the connection
        self.websocket = False  # a 101 is expected (upgrade request, read whole)
        self.chunked = False
        self.body_budget: int | None = None
        self.informational = False  # a 1xx head went to the client
        self.retry_ok = False
        self.attempt = 0
        self.url = ""
        self.request_bytes = b""
        self.framing = 0
        self.error_status = 0
        self.error_close = False

    def _take(self) -> list[Action]:
        out = self.out
        self.out = []
        while self.again and not self.finished:
            self.again = False
            self._next_request()
            if self.out:
                out.extend(self.out)
                self.out = []
        return out

    # -- inputs ----------------------------------------------------------------------------

    def start(self) -> list[Action]:
        """The client connection was accepted."""
        if not self.started:
            self.started = True
            self.ctx.metrics.connections += 1
            self._next_request()
        return self._take()

    def closed(self) -> None:
        """The edge has closed (or is closing) the connection: final bookkeeping."""
        if not self.finished:
            self._close(send=False)
        else:
            self._request_over()
        if self.started:
            self.started = False
            self.ctx.metrics.connections -= 1

    def client_data(self, data: bytes) -> list[Action]:
        """Bytes from the client (``b""``: it half-closed)."""
        state = self.state
        if state == _HEAD:
            if data and not self.seen:
                self.seen = True
                if not self.first:  # the idle wait is over: now the header timeout runs
                    self.phase = _HEADER
                    timeout = self.settings.header_timeout
                    self.deadline = self.ctx.clock() + timeout if timeout is not None else NEVER
            self.parser.feed(data)
            self._parse_head()
        elif state == _EXCHANGE and not self.request_done:
            self.parser.feed(data)
            self._pump_body()
        elif state != _CLOSED:
            self.parser.feed(data)  # pipelined (or EOF): looked at when its turn comes
        return self._take()

    def client_failed(self) -> list[Action]:
        """Reading from or writing to the client failed: stop."""
        self._close(send=True)
        return self._take()

    def backend_acquired(self, parser: ResponseParser, reused: bool) -> list[Action]:
        """The connection asked for by ``AcquireBackend``; ``parser`` frames what it sends;
        ``reused``: it came from the pool."""
        if self.state != _ACQUIRE:
            self.out.append(ReleaseBackend(False))
            return self._take()
        request = self.request
        assert request is not None
        self.backend = parser
        complete = self.request_done
        self.retry_ok = reused and complete and self.attempt == 0 and request.method in _IDEMPOTENT
        parser.expect(request.method, upgrade=self.websocket)
        self.request_sent = complete
        self.state = _EXCHANGE
        self.out.append(SendBackend(self.request_bytes))
        timeout = self.settings.backend_response_timeout
        if timeout is not None:
            self.phase = _BACKEND
            self.deadline = self.ctx.clock() + timeout
        self.read_backend = True
        if not complete:
            self.read_client = True
            self._pump_body()
        return self._take()

    def backend_unavailable(self, error: BackendError) -> list[Action]:
        """``AcquireBackend`` failed (refused, timed out, bad address)."""
        if self.state == _ACQUIRE:
            self.ctx.metrics.count_backend_error(self.router, _kind(error))
            self._backend_failed(error.status)
        return self._take()

    def backend_data(self, data: bytes) -> list[Action]:
        """Bytes from the backend (``b""``: it closed)."""
        parser = self.backend
        if self.state != _EXCHANGE or parser is None:
            return []
        parser.feed(data)
        self._on_backend(parser)
        return self._take()

    def backend_failed(self, error: BackendError) -> list[Action]:
        """Writing to or reading from the backend failed (reset, closed)."""
        if self.state == _EXCHANGE and self.backend is not None:
            self._backend_error(error)
        return self._take()

    def error_page(self, body: bytes | None, content_type: bytes | None) -> list[Action]:
        """The answer to ``FetchErrorPage`` (``None``: it failed; the default page is sent)."""
        if self.state == _FETCH:
            status = self.error_status
            if body is None:
                body = _BODIES.get(status, b"")
                content_type = _TEXT
            self.state = _HEAD
            self._respond(
                status,
                body,
                close=self.error_close,
                content_type=content_type or b"text/html; charset=utf-8",
            )
        return self._take()

    def deadline_passed(self) -> list[Action]:
        """The clock passed ``deadline``: 408 (head partly read), 504 (no response head from
        the backend in time) or just close."""
        if self.finished:
            return []
        self.deadline = NEVER
        phase = self.phase
        if self.state == _HEAD and phase == _HEADER and self.seen:
            self._send_simple(408, _generic(408), close=True)
            self._close(send=True)
        elif self.state == _EXCHANGE and phase == _BACKEND:
            self.ctx.metrics.count_backend_error(self.router, "timeout")
            self._release(False)
            if self.sent == _NOTHING:
                self._send_error(504, close=True)
            else:
                self._close(send=True)
        else:
            self._close(send=True)
        return self._take()

    # -- one request -----------------------------------------------------------------------

    def _next_request(self) -> None:
        self._reset()
        self.state = _HEAD
        self.phase = _HEADER if self.first else _IDLE
        self.seen = False
        self.waiting = False
        self.read_client = True
        self.read_backend = False
        self._parse_head()

    def _parse_head(self) -> None:
        parser = self.parser
        try:
            event = parser.next_event()
        except ParseError as exc:
            # The detail goes to the debug log only: it quotes what the client sent.
            logger.debug("refusing a malformed request: %s", exc.reason)
            self.deadline = NEVER
            self._send_simple(exc.status, _generic(exc.status), close=True)
            self._close(send=True)
            return
        if type(event) is RequestHead:
            self.deadline = NEVER
            self.read_client = False
            self.first = False
            self._handle(event)
            return
        if event is NEED_DATA and not parser.eof:
            if not self.waiting:
                self.waiting = True
                settings = self.settings
                timeout = settings.header_timeout if self.first else settings.idle_timeout
                self.deadline = self.ctx.clock() + timeout if timeout is not None else NEVER
            return
        self._close(send=True)  # EOF between requests

    def _handle(self, request: RequestHead) -> None:
        ctx = self.ctx
        settings = self.settings
        parser = self.parser
        self.request = request
        self.head = request.method == b"HEAD"
        self.target = request.target
        self.client_11 = request.http_version == b"1.1"
        prepared = prepare_request(
            request.target,
            request.headers,
            max_header_count=settings.max_header_count,
            max_header_bytes=settings.max_header_bytes,
            trust_forwarded=self.trusted,
            max_body_bytes=settings.max_body_bytes,
        )
        if type(prepared) is Rejection:
            self._respond(prepared.status, f"{prepared.reason}\n".encode(), close=True)
            return
        assert type(prepared) is PreparedRequest
        self.upgrade = prepared.websocket
        host = prepared.host.decode("latin-1") if prepared.host is not None else None
        route = ctx.table.lookup(host, prepared.path)
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
            self._respond(exc.status, _generic(exc.status), close=True)
            return
        complete = self.request_done
        chunked = self.chunked = prepared.chunked
        if chunked and settings.max_body_bytes is not None:
            budget = settings.max_body_bytes
            for event in events:
                if type(event) is Body:
                    budget -= len(event.data)
            if budget < 0:
                self._respond(413, _generic(413), close=True)
                return
            self.body_budget = budget
        if route is None:
            self._send_error(404, close=not complete)
            return
        router = self.router = route.router
        ctx.activity.touch(router)
        ctx.metrics.in_flight += 1
        self.in_flight = True
        service = route.service
        url = ctx.pick_server(service)
        if url is None:
            ctx.metrics.count_backend_error(router, "no_server")
            self._backend_failed(503)
            return
        try:
            address = ctx.address(url)
        except BackendError:
            ctx.metrics.count_backend_error(router, "bad_url")
            self._backend_failed(502)
            return
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
        head = request_head(request.method, prepared.path, headers)
        if events:
            parts = [head]
            for event in events:
                parts.append(_request_bytes(event, chunked))
            head = b"".join(parts)
        self.request_bytes = head
        self.websocket = prepared.websocket and complete
        self.url = url
        self.state = _ACQUIRE
        self.out.append(AcquireBackend(url))

    def _pump_body(self) -> None:
        """Stream what arrived of the request body to the backend (one write)."""
        parser = self.parser
        chunked = self.chunked
        parts: list[bytes] = []
        failed = 0
        while True:
            try:
                event = parser.next_event()
            except ParseError as exc:
                logger.debug("request body failed: %s", exc.reason)
                failed = exc.status
                break
            if event is NEED_DATA:
                if parser.eof:
                    logger.debug("the client closed inside the request body")
                    failed = 400
                break
            if type(event) is Body:
                data = event.data
                if self.body_budget is not None:
                    self.body_budget -= len(data)
                    if self.body_budget < 0:
                        logger.debug("chunked request body above max_body_bytes")
                        failed = 413
                        break
                parts.append(chunk(data) if chunked else data)
            elif type(event) is EndOfMessage:
                self.request_done = self.request_sent = True
                self.read_client = False
                end = _request_bytes(event, chunked)
                if end:
                    parts.append(end)
                break
            else:
                break
        if parts:
            self.out.append(SendBackend(parts[0] if len(parts) == 1 else b"".join(parts)))
        if failed:
            self._release(False)
            self._send_simple(failed, _generic(failed), close=True)
            self._close(send=True)

    def _on_backend(self, parser: ResponseParser) -> None:
        """Turn what the backend sent into (at most) one write to the client."""
        response = self.response
        parts: list[bytes] = []
        try:
            if response is None:
                while True:
                    event = parser.next_event()
                    if event is NEED_DATA:
                        if parser.eof:
                            raise BackendProtocolError(f"backend {self.url} closed the connection")
                        return
                    if type(event) is not ResponseHead:
                        raise BackendProtocolError(f"backend {self.url} sent {event!r}")
                    status = event.status
                    if status >= 200:
                        break
                    if status == 101:
                        if self.websocket:
                            self._switch(event)
                            return
                        raise BackendProtocolError(f"backend {self.url} switched protocols unasked")
                    if self.client_11:
                        self.informational = True
                        self.out.append(
                            SendClient(
                                response_head(status, event.reason, response_headers(event.headers))
                            )
                        )
                self.deadline = NEVER
                self.phase = _IDLE
                framing = self.framing = client_framing(
                    status=status,
                    head_request=self.head,
                    content_length=event.content_length,
                    client_11=self.client_11,
                )
                request = self.request
                # the client will not (or cannot) reuse this connection
                close = self.upgrade or (request is not None and not request.keep_alive)
                head = client_response_head(
                    status,
                    event.reason,
                    response_headers(event.headers),
                    framing=framing,
                    close=close,
                )
                if close or framing == UNTIL_CLOSE:
                    self.close_after = True
                response = self.response = event
                self.status = status
                self.sent = _HEAD_SENT
                parts.append(head)
        except BackendError as exc:
            self._backend_error(exc)
            return
        except ParseError as exc:
            self._backend_error(
                BackendProtocolError(f"backend {self.url} sent invalid HTTP: {exc.reason}")
            )
            return
        framing = self.framing
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
        if parts:
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if data:
                self.out.append(SendClient(data))
        if finished:
            self.sent = _DONE
            self._release(self.request_sent and response.keep_alive)
            self._cycle_over()
        elif broken:
            self.ctx.metrics.count_backend_error(self.router, "reset")
            self._release(False)
            self._close(send=True)

    def _switch(self, event: ResponseHead) -> None:
        """A 101 to a WebSocket request: the connection becomes a raw relay."""
        backend = self.backend
        assert backend is not None
        self.deadline = NEVER
        try:
            headers = response_headers(event.headers, switching=True)
        except BackendError as exc:
            self._backend_error(exc)
            return
        self.status = 101
        self.sent = _DONE
        self.out.append(SendClient(response_head(101, event.reason, headers)))
        self.out.append(
            RelayWebSocket(self.parser.take_trailing(), backend.take_trailing(), self.router)
        )
        self.backend = None  # the relay's now
        self.read_client = self.read_backend = False
        self.state = _CLOSED
        self.finished = True

    # -- errors ----------------------------------------------------------------------------

    def _backend_error(self, error: BackendError) -> None:
        """The held backend connection failed (or sent something unusable)."""
        if self.sent != _NOTHING:
            self.ctx.metrics.count_backend_error(self.router, "reset")
            self._release(False)
            self._close(send=True)
            return
        self._release(False)
        if self.retry_ok and not self.informational and not isinstance(error, BackendTimeoutError):
            # a reused pooled connection the backend had closed: once more on a new one
            self.retry_ok = False
            self.attempt = 1
            self.deadline = NEVER
            self.read_client = False
            self.state = _ACQUIRE
            self.out.append(AcquireBackend(self.url))
            return
        self.ctx.metrics.count_backend_error(self.router, _kind(error))
        self._backend_failed(error.status)

    def _backend_failed(self, status: int) -> None:
        """Answer ``status`` for a backend failure when no response has started yet."""
        self.deadline = NEVER
        self.read_backend = False
        if self.sent != _NOTHING:
            self._close(send=True)
            return
        if status == 502:
            status = self.settings.backend_down_status
        self._send_error(status, close=not self.request_done)

    def _send_error(self, status: int, *, close: bool) -> None:
        settings = self.settings
        target = settings.error_target
        if target is not None and status in _ERROR_TARGET_STATUSES and self.sent == _NOTHING:
            self.state = _FETCH
            self.error_status = status
            self.error_close = close
            self.read_client = self.read_backend = False
            self.deadline = NEVER
            self.out.append(
                FetchErrorPage(
                    f"{target.rstrip('/')}/{status}"
                    f"?url={quote(self.target, safe=_URI_COMPONENT_SAFE)}"
                )
            )
            return
        self._respond(status, _BODIES.get(status, b""), close=close)

    def _respond(
        self, status: int, body: bytes, *, close: bool, content_type: bytes = _TEXT
    ) -> None:
        """A whole response of the proxy's own, then the end of the cycle."""
        self._send_simple(status, body, close=close, content_type=content_type)
        self._cycle_over()

    def _send_simple(
        self, status: int, body: bytes, *, close: bool, content_type: bytes = _TEXT
    ) -> None:
        if self.sent != _NOTHING:
            self._close(send=True)  # too late for a clean answer
            return
        self.status = status
        self.sent = _DONE
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
        request = self.request
        if close or self.upgrade or request is None or not request.keep_alive:
            headers.append((b"Connection", b"close"))
            self.close_after = True
        head = response_head(status, reason(status), headers)
        self.out.append(SendClient(head if self.head or not body else head + body))

    # -- the end of a request, of the connection -------------------------------------------

    def _release(self, reusable: bool) -> None:
        if self.backend is not None:
            self.backend = None
            self.read_backend = False
            self.out.append(ReleaseBackend(reusable))

    def _request_over(self) -> None:
        """Counters for the request that ends (once)."""
        if self.in_flight:
            self.in_flight = False
            self.ctx.metrics.in_flight -= 1
            self.ctx.activity.touch(self.router)
        if self.status and not self.counted:
            self.counted = True
            self.ctx.metrics.count_response(self.router, self.status)

    def _cycle_over(self) -> None:
        """A response is out: the next request, or close."""
        if self.finished:
            return
        self._request_over()
        request = self.request
        if (
            self.sent != _DONE
            or not self.request_done
            or self.close_after
            or request is None
            or not request.keep_alive
        ):
            self._close(send=True)
            return
        self.parser.start_next_cycle()
        self.state = _HEAD
        self.read_client = False
        self.again = True  # _take() runs the next cycle (no recursion through pipelining)

    def _close(self, *, send: bool) -> None:
        if self.finished:
            return
        self._request_over()
        self._release(False)
        self.finished = True
        self.state = _CLOSED
        self.read_client = self.read_backend = False
        self.deadline = NEVER
        self.again = False
        if send:
            self.out.append(CLOSE_CLIENT)


__all__ = [
    "CLOSE_CLIENT",
    "AcquireBackend",
    "Action",
    "ClientCore",
    "CloseClient",
    "CoreContext",
    "EmptyTable",
    "FetchErrorPage",
    "RelayWebSocket",
    "ReleaseBackend",
    "RouteLike",
    "SendBackend",
    "SendClient",
    "TableLike",
]
