"""The reference parser: :mod:`._http`'s interface over h11's state machines.

h11 validates every byte and frames the bodies; this module only translates its events into
ours and adds what the contract asks beyond h11: a request with both ``Content-Length`` and
``Transfer-Encoding`` is refused (h11 lets chunked win), a length above 2^63-1 is refused, an
HTTP version whose major is not 1 gets 505, and a 1.x minor above 1 is reported as 1.1.

h11 models both directions of a connection, but each parser here sees one: the request parser
is h11's server side, which will not start the next cycle until "we" have answered, so
:meth:`H11RequestParser.start_next_cycle` pushes a minimal response through the h11 machine
(its bytes are thrown away). Likewise the response parser's :meth:`H11ResponseParser.expect`
sends h11 a minimal request with the method (and the upgrade proposal) the response answers.
"""

from __future__ import annotations

import h11

from ._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    Header,
    ParseError,
    ParserUsageError,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
)

_MAX_CONTENT_LENGTH = 2**63 - 1
_FAKE_RESPONSE = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
_H11_EOM = h11.EndOfMessage()


def _framing(headers: list[Header]) -> tuple[bool, int | None, bool, bool]:
    """(chunked, content_length, close token, has both framing fields) of validated fields."""
    chunked = False
    length: int | None = None
    close = False
    for name, value in headers:
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"connection":
            for token in value.split(b","):
                if token.strip().lower() == b"close":
                    close = True
    both = chunked and length is not None
    return chunked, length, close, both


def _version(raw: bytes, status: int) -> bytes:
    """``b"1.0"`` / ``b"1.1"`` for h11's ``digit.digit``; else ParseError(status)."""
    if raw[:2] != b"1.":
        raise ParseError(status, f"HTTP version {raw.decode('ascii', 'replace')} not supported")
    return b"1.0" if raw == b"1.0" else b"1.1"


class H11RequestParser:
    """The client side of a connection, parsed by ``h11.Connection(SERVER)``."""

    __slots__ = ("_conn", "_done", "_error", "_keep_alive", "_switching", "eof")

    def __init__(self, *, max_head_bytes: int) -> None:
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)
        self._error: ParseError | None = None
        self._done = False  # the current request's EndOfMessage was returned
        self._keep_alive = False
        self._switching = False
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self.eof:
            return
        if not data:
            self.eof = True
        if self._error is None:
            self._conn.receive_data(data)

    def _fail(self, error: ParseError) -> ParseError:
        self._error = error
        return error

    def next_event(self) -> RequestEvent:
        if self._error is not None:
            raise self._error
        if self._done:
            return PAUSED
        try:
            event = self._conn.next_event()
        except h11.ProtocolError as exc:
            status = getattr(exc, "error_status_hint", 400)
            raise self._fail(ParseError(status, str(exc))) from None
        kind = type(event)
        if kind is h11.Data:
            return Body(bytes(event.data))  # type: ignore[union-attr]
        if kind is h11.Request:
            return self._head(event)  # type: ignore[arg-type]
        if kind is h11.EndOfMessage:
            self._done = True
            return EndOfMessage(list(event.headers))  # type: ignore[union-attr]
        if event is h11.NEED_DATA:
            return NEED_DATA
        if kind is h11.ConnectionClosed:
            self.eof = True
            return NEED_DATA
        return PAUSED  # h11.PAUSED: a protocol switch is pending

    def _head(self, event: h11.Request) -> RequestHead:
        try:
            version = _version(event.http_version, 505)
        except ParseError as exc:
            raise self._fail(exc) from None
        headers = list(event.headers)
        chunked, length, close, both = _framing(headers)
        if both:
            raise self._fail(ParseError(400, "both Content-Length and Transfer-Encoding"))
        if length is not None and length > _MAX_CONTENT_LENGTH:
            raise self._fail(ParseError(400, "Content-Length above 2^63-1"))
        expect = False
        if version == b"1.1":
            for name, value in headers:
                if name == b"expect" and value.lower() == b"100-continue":
                    expect = True
        self._keep_alive = version == b"1.1" and not close
        return RequestHead(
            event.method,
            event.target,
            version,
            headers,
            keep_alive=self._keep_alive,
            chunked=chunked,
            content_length=length,
            expect_continue=expect,
        )

    def start_next_cycle(self) -> None:
        if not self._done or not self._keep_alive:
            raise ParserUsageError("start_next_cycle before the end of a kept-alive request")
        conn = self._conn
        try:
            conn.send(_FAKE_RESPONSE)
            conn.send(_H11_EOM)
            conn.start_next_cycle()
        except h11.ProtocolError as exc:
            raise ParserUsageError(f"h11 cannot start the next cycle: {exc}") from None
        self._done = False

    def take_trailing(self) -> bytes:
        return bytes(self._conn.trailing_data[0])


class H11ResponseParser:
    """The backend side of a connection, parsed by ``h11.Connection(CLIENT)``."""

    __slots__ = (
        "_conn",
        "_done",
        "_error",
        "_expecting",
        "_keep_alive",
        "_method",
        "_switched",
        "eof",
    )

    def __init__(self, *, max_head_bytes: int) -> None:
        self._conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_head_bytes)
        self._error: ParseError | None = None
        self._done = False
        self._expecting = False
        self._keep_alive = False
        self._switched = False
        self._method = b"GET"
        self.eof = False

    def _fail(self, error: ParseError) -> ParseError:
        self._error = error
        return error

    def expect(self, method: bytes, *, upgrade: bool = False) -> None:
        if self._expecting or self._done:
            raise ParserUsageError("expect() while a response is still being parsed")
        headers = [(b"host", b"backend")]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        conn = self._conn
        try:
            conn.send(h11.Request(method=method, target=b"/", headers=headers))
            conn.send(_H11_EOM)
        except h11.ProtocolError as exc:
            raise ParserUsageError(f"h11 refused the expected request: {exc}") from None
        self._expecting = True
        self._method = method

    def feed(self, data: bytes) -> None:
        if self.eof:
            return
        if not data:
            self.eof = True
        if self._error is None:
            self._conn.receive_data(data)

    def next_event(self) -> ResponseEvent:
        if self._error is not None:
            raise self._error
        if self._done or self._switched:
            return PAUSED
        if not self._expecting:
            if self.eof:
                return NEED_DATA
            raise ParserUsageError("next_event() before expect()")
        try:
            event = self._conn.next_event()
        except h11.ProtocolError as exc:
            raise self._fail(ParseError(502, f"invalid HTTP from the backend: {exc}")) from None
        kind = type(event)
        if kind is h11.Data:
            return Body(bytes(event.data))  # type: ignore[union-attr]
        if kind is h11.Response or kind is h11.InformationalResponse:
            return self._head(event)  # type: ignore[arg-type]
        if kind is h11.EndOfMessage:
            self._done = True
            self._expecting = False
            return EndOfMessage(list(event.headers))  # type: ignore[union-attr]
        if event is h11.NEED_DATA:
            return NEED_DATA
        if kind is h11.ConnectionClosed:
            self.eof = True
            raise self._fail(ParseError(502, "the backend closed the connection"))
        return PAUSED

    def _head(self, event: h11.Response | h11.InformationalResponse) -> ResponseHead:
        try:
            version = _version(event.http_version, 502)
        except ParseError as exc:
            raise self._fail(exc) from None
        headers = list(event.headers)
        chunked, length, close, both = _framing(headers)
        if both:
            length = None
        if length is not None and length > _MAX_CONTENT_LENGTH:
            raise self._fail(ParseError(502, "backend sent a Content-Length above 2^63-1"))
        status = event.status_code
        if status == 101:
            self._switched = True
        # a body framed by length or chunks, or none at all (HEAD, 1xx, 204, 304)
        framed = (
            chunked
            or length is not None
            or status < 200
            or status in (204, 304)
            or self._method == b"HEAD"
        )
        self._keep_alive = version == b"1.1" and not close and framed
        return ResponseHead(
            status,
            bytes(event.reason),
            version,
            headers,
            keep_alive=self._keep_alive,
            chunked=chunked,
            content_length=length,
        )

    def start_next_cycle(self) -> None:
        if not self._done or not self._keep_alive:
            raise ParserUsageError("start_next_cycle before the end of a kept-alive response")
        try:
            self._conn.start_next_cycle()
        except h11.ProtocolError as exc:
            raise ParserUsageError(f"h11 cannot start the next cycle: {exc}") from None
        self._done = False

    def take_trailing(self) -> bytes:
        return bytes(self._conn.trailing_data[0])


__all__ = ["H11RequestParser", "H11ResponseParser"]
