"""The fast HTTP/1.1 parser: httptools (llhttp, node's parser) behind the parser interface.

Theory of operation
-------------------
The contract is :mod:`._http`'s (events out, :class:`ParseError` with the status the proxy
answers); the reference is the h11 parser of :mod:`._parse_h11`. This parser must give the
same answer as the reference for every input: the same events for what h11 accepts, a
:class:`ParseError` with the same status for what it refuses. It gets there in three layers:

1. **The head is cut where h11 cuts it.** Bytes are buffered until the first blank line (a
   ``bytes.find`` of CRLF CRLF; h11's ``\\n\\r?\\n`` when a bare LF comes first, which llhttp
   refuses, so such a head is cut again by h11's rule on the cold path); a buffer above
   ``max_head_bytes`` without one is 431 (502 from a backend), as with h11. Only the complete
   head is ever fed to llhttp, never a body byte: llhttp parses all it is fed and cannot be
   paused through httptools, so the framing -- where a body ends, the chunked decoding,
   trailers, pipelining, HEAD / 1xx / 204 / 304 / 101, EOF -- is this module's, written to
   h11's rules (per chunk and per read, never per byte).
2. **A cheap pre-pass picks the fast path.** One compiled regex over the start line (h11's
   grammar, versions 1.0 and 1.1 only) and llhttp in strict mode (every dangerous leniency
   off, which is llhttp's default and asserted by the tests) over the head. What llhttp accepts
   and h11 refuses was measured on the hostile corpus and on every byte value in every head
   position: only start-line shapes (two spaces, a missing version, ``RTSP/``, a leading empty
   line), NUL / VT / FF in a reason phrase, and the meaning of the framing and Host fields.
   The start-line regex catches the first two; the field meanings are checked in Python on the
   collected fields, with h11's rules (duplicate or conflicting ``Content-Length``, 20 digits at
   most, ``Transfer-Encoding`` other than one ``chunked``, one Host) and the interface's own
   (``Content-Length`` with ``Transfer-Encoding``, lengths above 2^63-1).
3. **The cold path is the reference.** A head llhttp refuses, or one the pre-pass does not
   take, is handed as bytes to the h11 parser, which decides: it either refuses it (with its
   status) or returns the head, and the body is then framed here as for a fast head. llhttp is
   stricter than h11 in places (obs-fold, bare-LF line endings, ``Content-Length: 5, 5``,
   ``HTTP/1.2``, methods it does not know, control bytes h11 allows in a value): those heads
   are rare and take h11's path, so the answers stay h11's. Hostile input costs what it costs
   with h11; ordinary requests cost one llhttp call and one pass over the fields.

After a message ends the parser is PAUSED until :meth:`start_next_cycle`, with pipelined bytes
kept in its buffer; after an error every call raises the same error again.
"""

from __future__ import annotations

import re
from typing import Final

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

from ._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    Header,
    NeedData,
    ParseError,
    ParserUsageError,
    RequestEvent,
    RequestHead,
    ResponseEvent,
    ResponseHead,
)
from ._parse_h11 import H11RequestParser, H11ResponseParser

__all__ = ["HttptoolsRequestParser", "HttptoolsResponseParser"]


_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
# h11's request line with the version narrowed to the two we speak (anything else: cold path)
_REQUEST_LINE: Final = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
# h11's status line (the reason is optional; it may hold any byte but NUL, CR, LF, VT, FF)
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([^\x00\n\r\x0b\x0c]*))?\r\n")
_BLANK_LINE: Final = re.compile(rb"\n\r?\n")
# h11's chunk-size line: 1-20 hex digits, any extension up to the CRLF, trailing OWS
_CHUNK_LINE: Final = re.compile(rb"([0-9A-Fa-f]{1,20})(?:;[^\n]*)?[ \t]*\r\n")
# a trailer field line (h11's field-line grammar: token ":" OWS value OWS)
_FIELD_LINE: Final = re.compile(
    rb"(" + _TOKEN + rb"):[ \t]*((?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?)[ \t]*"
)
_OBS_FOLD: Final = re.compile(rb"[ \t]+")
_DIGITS: Final = re.compile(rb"[0-9]+")
_MAX_LENGTH: Final = 2**63 - 1
_SPECIAL: Final = frozenset(
    {b"content-length", b"transfer-encoding", b"host", b"connection", b"expect"}
)
_EMPTY: Final = b""
_CRLF: Final = b"\r\n"

# states
_HEAD: Final = 0
_BODY: Final = 1
_TRAILERS: Final = 2  # the trailer section of a chunked body
_DONE: Final = 3  # the message ended: PAUSED until start_next_cycle
_SWITCHED: Final = 4  # a 101 came: PAUSED for good

# body framings
_NONE: Final = 0
_LENGTH: Final = 1
_CHUNKED: Final = 2
_UNTIL_EOF: Final = 3


class _Fields:
    """What llhttp reports about a head: its field lines, in order, names as sent."""

    __slots__ = ("complete", "fields")

    def __init__(self) -> None:
        self.fields: list[Header] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.complete = True


def _llhttp_fields(head: bytes) -> list[Header] | None:
    """The raw field lines of a response head as strict llhttp reads them; None if refused."""
    sink = _Fields()
    try:
        HttpResponseParser(sink).feed_data(head)
    except HttpParserUpgrade:
        pass  # a 101: the head was read completely; what follows is not HTTP
    except HttpParserError:
        return None
    return sink.fields if sink.complete else None


class _Framing:
    """The meaning of the framing fields, checked with h11's rules plus the interface's.

    One pass over the fields llhttp collected: names lower-cased, values stripped of their
    trailing whitespace (llhttp strips the leading), errors raised in field order as h11 does.
    """

    __slots__ = ("chunked", "close", "content_length", "expect", "headers", "hosts")

    def __init__(self, fields: list[Header], status: int) -> None:
        headers: list[Header] = []
        append = headers.append
        content_length: bytes | None = None
        chunked = close = expect = False
        hosts = 0
        for raw_name, raw_value in fields:
            name = raw_name.lower()
            value = raw_value.rstrip()
            if name in _SPECIAL:
                if name == b"content-length":
                    lengths = {part.strip() for part in value.split(b",")}
                    if len(lengths) != 1:
                        raise ParseError(status, "conflicting Content-Length headers")
                    value = lengths.pop()
                    if _DIGITS.fullmatch(value) is None or len(value) > 20:
                        raise ParseError(status, f"bad Content-Length {value[:40]!r}")
                    if content_length is None:
                        content_length = value
                    elif content_length != value:
                        raise ParseError(status, "conflicting Content-Length headers")
                    else:
                        continue  # a repeated equal length is kept once (h11)
                elif name == b"transfer-encoding":
                    coding_status = 501 if status == 400 else status
                    if chunked:
                        raise ParseError(coding_status, "multiple Transfer-Encoding headers")
                    value = value.lower()
                    if value != b"chunked":
                        raise ParseError(
                            coding_status, f"Transfer-Encoding {value[:40]!r}: only chunked"
                        )
                    chunked = True
                elif name == b"host":
                    hosts += 1
                elif name == b"connection":
                    lowered = value.lower()
                    if not close and b"close" in lowered:
                        close = any(t.strip() == b"close" for t in lowered.split(b","))
                elif value.lower() == b"100-continue":  # expect
                    expect = True
            append((name, value))
        self.headers = headers
        self.chunked = chunked
        self.close = close
        self.expect = expect
        self.hosts = hosts
        self.content_length = None if content_length is None else int(content_length)


class _Parser:
    """Buffering, head cutting, body framing and the cycle: shared by both directions."""

    __slots__ = (
        "_buf",
        "_error",
        "_footer",
        "_framing",
        "_keep_alive",
        "_left",
        "_max",
        "_search",
        "_state",
        "eof",
    )

    _error_status = 400

    def __init__(self, *, max_head_bytes: int) -> None:
        self._buf = _EMPTY
        self._max = max_head_bytes
        self._error: ParseError | None = None
        self._state = _HEAD
        self._keep_alive = False  # the current message's
        self._framing = _NONE
        self._left = 0  # bytes left in the body (content-length) or in the current chunk
        self._footer = _EMPTY  # what must follow the chunk data still (b"\r\n", b"\n", b"")
        self._search = 0  # where the search for the blank line resumes
        self.eof = False

    def feed(self, data: bytes) -> None:
        if self.eof:
            return  # nothing counts after EOF
        if not data:
            self.eof = True
        elif self._buf:
            self._buf += data
        else:
            self._buf = bytes(data)

    def take_trailing(self) -> bytes:
        return self._buf

    def start_next_cycle(self) -> None:
        if self._state != _DONE or not self._keep_alive:
            raise ParserUsageError("start_next_cycle before the end of a kept-alive message")
        self._state = _HEAD
        self._search = 0

    def _fail(self, reason: str, status: int | None = None) -> ParseError:
        self._error = ParseError(self._error_status if status is None else status, reason)
        return self._error

    def _cut_head(self) -> bytes | None:
        """The complete head (through its blank line) taken off the buffer, or None.

        The fast cut is the first CRLF CRLF. A head with a bare LF before it may end earlier by
        h11's rule (``\\n\\r?\\n``), but llhttp refuses every bare LF, so such a head goes to
        :meth:`_recut` and the reference: the fast path never sees a head h11 would cut
        elsewhere.
        """
        buf = self._buf
        end = buf.find(b"\r\n\r\n", self._search)
        if end >= 0:
            end += 4
        else:
            match = _BLANK_LINE.search(buf, max(0, self._search - 2))
            if match is None:
                self._search = max(0, len(buf) - 3)
                return None
            end = match.end()
        self._buf = buf[end:]
        return buf[:end]

    def _recut(self, head: bytes) -> bytes:
        """Put ``head`` back and cut it again by h11's rule (the cold path)."""
        buf = head + self._buf
        match = _BLANK_LINE.search(buf)
        end = len(head) if match is None else match.end()
        self._buf = buf[end:]
        return buf[:end]

    def _head_needs_data(self) -> None:
        """No complete head yet: 431 above the limit, 400 on EOF (h11's answers)."""
        if len(self._buf) > self._max:
            raise self._fail(
                f"head larger than {self._max} bytes", 431 if self._error_status == 400 else None
            )
        if self.eof and self._buf:
            raise self._fail("peer closed the connection in the middle of a head")

    def _reference_refuses(self, partial: bytes) -> None:
        """An incomplete head the reference refuses already (it starts with a byte < 0x21)."""
        reference = self._reference()
        reference.feed(partial)
        if self.eof:
            reference.feed(_EMPTY)
        try:
            reference.next_event()  # raises: no head can come out of bytes with no blank line
        except ParseError as exc:
            self._error = exc
            raise

    def _reference(self) -> H11RequestParser | H11ResponseParser:
        raise NotImplementedError

    def _reference_head(self, head: bytes) -> RequestEvent | ResponseEvent:
        """The reference parser's first event for a complete head (or its ParseError)."""
        reference = self._reference()
        reference.feed(head)
        try:
            return reference.next_event()
        except ParseError as exc:
            self._error = exc
            raise

    def _start_body(self, framing: int, length: int) -> None:
        self._framing = framing
        self._left = length
        self._footer = _EMPTY
        self._search = 0
        self._state = _BODY

    def _body_event(self) -> Body | EndOfMessage | NeedData:
        framing = self._framing
        if framing == _LENGTH:
            left = self._left
            if left == 0:
                self._state = _DONE
                return EndOfMessage()
            buf = self._buf
            if not buf:
                if self.eof:
                    raise self._fail(
                        f"peer closed the connection {left} bytes before the body's end"
                    )
                return NEED_DATA
            if len(buf) <= left:
                self._buf = _EMPTY
                self._left = left - len(buf)
                return Body(buf)
            self._buf = buf[left:]
            self._left = 0
            return Body(buf[:left])
        if framing == _CHUNKED:
            return self._chunked_event()
        if framing == _UNTIL_EOF:
            buf = self._buf
            if buf:
                self._buf = _EMPTY
                return Body(buf)
            if self.eof:
                self._state = _DONE
                return EndOfMessage()
            return NEED_DATA
        self._state = _DONE
        return EndOfMessage()

    def _chunked_event(self) -> Body | EndOfMessage | NeedData:
        while True:
            buf = self._buf
            if self._state == _TRAILERS:
                return self._trailer_event()
            footer = self._footer
            if footer:
                if not buf:
                    return self._chunk_needs_data()
                part = buf[: len(footer)]
                if part != footer[: len(part)]:
                    raise self._fail(f"malformed chunk footer {part!r} (expected {footer!r})")
                self._footer = footer[len(part) :]
                buf = self._buf = buf[len(part) :]
                if self._footer:
                    return self._chunk_needs_data()
            left = self._left
            if left == 0:
                end = buf.find(_CRLF, self._search)
                if end < 0:
                    self._search = max(0, len(buf) - 1)  # a long line is searched once
                    return self._chunk_needs_data()
                self._search = 0
                line = buf[: end + 2]
                match = _CHUNK_LINE.fullmatch(line)
                if match is None:
                    raise self._fail(f"illegal chunk header {line[:40]!r}")
                left = int(match[1], 16)
                buf = self._buf = buf[end + 2 :]
                if left == 0:
                    self._state = _TRAILERS
                    continue
                self._left = left
            if not buf:
                return self._chunk_needs_data()
            if len(buf) < left:
                self._buf = _EMPTY
                self._left = left - len(buf)
                return Body(buf)
            self._buf = buf[left:]
            self._left = 0
            self._footer = _CRLF
            return Body(buf[:left])

    def _chunk_needs_data(self) -> NeedData:
        if len(self._buf) > self._max:
            raise self._fail(
                f"chunk-size line longer than {self._max} bytes",
                431 if self._error_status == 400 else None,
            )
        if self.eof:
            raise self._fail("peer closed the connection in the middle of a chunked body")
        return NEED_DATA

    def _trailer_event(self) -> EndOfMessage | NeedData:
        buf = self._buf
        if buf[:1] == b"\n":
            self._buf = buf[1:]
            lines: list[bytes] = []
        elif buf[:2] == _CRLF:
            self._buf = buf[2:]
            lines = []
        else:
            match = _BLANK_LINE.search(buf, max(0, self._search - 2))
            if match is None:
                self._search = len(buf)
                return self._chunk_needs_data()
            self._search = 0
            self._buf = buf[match.end() :]
            lines = [
                line[:-1] if line.endswith(b"\r") else line
                for line in buf[: match.end()].split(b"\n")
            ][:-2]
        self._state = _DONE
        return EndOfMessage(self._trailers(lines))

    def _trailers(self, lines: list[bytes]) -> list[Header]:
        """h11's field-line rules: obs-fold joined with a space, each line token ":" value."""
        folded: list[bytes] = []
        for line in lines:
            match = _OBS_FOLD.match(line)
            if match is not None:
                if not folded:
                    raise self._fail("continuation line at the start of the trailers")
                folded[-1] += b" " + line[match.end() :]
            else:
                folded.append(line)
        fields: list[Header] = []
        for line in folded:
            field = _FIELD_LINE.fullmatch(line)
            if field is None:
                raise self._fail(f"illegal trailer line {line[:40]!r}")
            fields.append((field[1], field[2]))
        try:
            return _Framing(fields, self._error_status).headers
        except ParseError as exc:
            self._error = exc
            raise


class HttptoolsRequestParser(_Parser):
    """The client side: request heads, bodies and the keep-alive cycle."""

    __slots__ = ("_llhttp_parser", "_sink")

    def __init__(self, *, max_head_bytes: int) -> None:
        super().__init__(max_head_bytes=max_head_bytes)
        self._sink = _Fields()
        self._llhttp_parser: HttpRequestParser | None = None

    def _llhttp(self, head: bytes) -> list[Header] | None:
        """The raw field lines of ``head`` as strict llhttp reads them; None if refused.

        One llhttp parser serves a kept-alive connection while its requests have no body (it
        is then back at a message start); after anything else the next head gets a new one.
        An llhttp parser left in a state we did not expect can only refuse (cold path).
        """
        sink = self._sink
        sink.fields = []
        sink.complete = False
        parser = self._llhttp_parser
        if parser is None:
            parser = self._llhttp_parser = HttpRequestParser(sink)
        try:
            parser.feed_data(head)
        except HttpParserUpgrade:
            self._llhttp_parser = None  # Upgrade / CONNECT: read completely; framing is ours
        except HttpParserError:
            self._llhttp_parser = None
            return None
        if not sink.complete:
            self._llhttp_parser = None
            return None
        return sink.fields

    def next_event(self) -> RequestEvent:
        if self._error is not None:
            raise self._error
        state = self._state
        if state in (_BODY, _TRAILERS):
            return self._body_event()
        if state == _DONE:
            return PAUSED
        buf = self._buf
        if not buf:
            return NEED_DATA  # with eof: the client closed between requests
        head = self._cut_head()
        if head is None:
            if buf[0] < 0x21:  # h11 refuses it before the head is complete
                self._reference_refuses(buf)
            self._head_needs_data()
            return NEED_DATA
        line = _REQUEST_LINE.match(head)
        fields = None if line is None or len(head) > self._max else self._llhttp(head)
        if line is None or fields is None:
            return self._cold(self._recut(head))
        try:
            framing = _Framing(fields, 400)
        except ParseError as exc:
            self._error = exc
            raise
        version = b"1.1" if line[3] == b"1" else b"1.0"
        if framing.hosts != 1:
            if framing.hosts > 1:
                raise self._fail("Found multiple Host: headers")
            if version == b"1.1":
                raise self._fail("Missing mandatory Host: header")
        length = framing.content_length
        keep_alive = version == b"1.1" and not framing.close
        if framing.chunked:
            if length is not None:
                raise self._fail("both Content-Length and Transfer-Encoding")
            self._llhttp_parser = None
            self._start_body(_CHUNKED, 0)
        elif length:
            if length > _MAX_LENGTH:
                raise self._fail("Content-Length above 2^63-1")
            self._llhttp_parser = None
            self._start_body(_LENGTH, length)
        else:
            if not keep_alive:
                self._llhttp_parser = None
            self._start_body(_NONE, 0)
        self._keep_alive = keep_alive
        return RequestHead(
            line[1],
            line[2],
            version,
            framing.headers,
            keep_alive=keep_alive,
            chunked=framing.chunked,
            content_length=length,
            expect_continue=framing.expect and version == b"1.1",
        )

    def _reference(self) -> H11RequestParser:
        return H11RequestParser(max_head_bytes=self._max)

    def _cold(self, head: bytes) -> RequestHead:
        """The reference decides a head the fast path does not take."""
        self._llhttp_parser = None
        event = self._reference_head(head)
        if not isinstance(event, RequestHead):  # cannot be: the head is complete
            raise self._fail(f"the reference parser read no head from {head[:40]!r}")
        if event.chunked:
            self._start_body(_CHUNKED, 0)
        elif event.content_length:
            self._start_body(_LENGTH, event.content_length)
        else:
            self._start_body(_NONE, 0)
        self._keep_alive = event.keep_alive
        return event


class HttptoolsResponseParser(_Parser):
    """The backend side: response heads (1xx first), bodies, HEAD, close-delimited, 101."""

    __slots__ = ("_expecting", "_method", "_upgrade")

    _error_status = 502

    def __init__(self, *, max_head_bytes: int) -> None:
        super().__init__(max_head_bytes=max_head_bytes)
        self._method = b"GET"
        self._upgrade = False
        self._expecting = False

    def expect(self, method: bytes, *, upgrade: bool = False) -> None:
        if self._expecting or self._state == _DONE or self._state == _SWITCHED:
            raise ParserUsageError("expect() while a response is still being parsed")
        self._method = method
        self._upgrade = upgrade
        self._expecting = True

    def start_next_cycle(self) -> None:
        super().start_next_cycle()
        self._expecting = False

    def next_event(self) -> ResponseEvent:
        if self._error is not None:
            raise self._error
        state = self._state
        if state in (_BODY, _TRAILERS):
            return self._body_event()
        if state in (_DONE, _SWITCHED):
            return PAUSED
        if not self._expecting:
            if self.eof:
                return NEED_DATA
            raise ParserUsageError("next_event() before expect()")
        buf = self._buf
        if not buf:
            if self.eof:
                raise self._fail("the backend closed the connection")
            return NEED_DATA
        head = self._cut_head()
        if head is None:
            if buf[0] < 0x21:
                self._reference_refuses(buf)
            self._head_needs_data()
            return NEED_DATA
        line = _STATUS_LINE.match(head)
        fields = None if line is None or len(head) > self._max else _llhttp_fields(head)
        if line is None or fields is None:
            return self._cold(self._recut(head))
        try:
            framing = _Framing(fields, 502)
        except ParseError as exc:
            self._error = exc
            raise
        length = framing.content_length
        if length is not None and length > _MAX_LENGTH:
            raise self._fail("backend sent a Content-Length above 2^63-1")
        status = int(line[2])
        version = b"1.1" if line[1] == b"1" else b"1.0"
        event = ResponseHead(
            status,
            line[3] or _EMPTY,
            version,
            framing.headers,
            keep_alive=version == b"1.1" and not framing.close,
            chunked=framing.chunked,
            content_length=length,
        )
        self._frame(event)
        return event

    def _frame(self, head: ResponseHead) -> None:
        """h11's response framing: no body for 1xx, 204, 304 and HEAD; 101 switches."""
        status = head.status
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise self._fail("101 Switching Protocols to a request that proposed none")
                self._state = _SWITCHED
            self._search = 0  # informational: the final head follows
            return
        length = head.content_length
        if status == 204 or status == 304 or self._method == b"HEAD":
            self._start_body(_NONE, 0)
        elif self._method == b"CONNECT" and status < 300:
            self._state = _SWITCHED  # a tunnel, as h11 reads it (the core never sends CONNECT)
        elif head.chunked:
            self._start_body(_CHUNKED, 0)
        elif length is not None:
            self._start_body(_LENGTH, length)
        else:
            head.keep_alive = False  # the body ends with the connection
            self._start_body(_UNTIL_EOF, 0)
        self._keep_alive = head.keep_alive
        self._expecting = False

    def _reference(self) -> H11ResponseParser:
        reference = H11ResponseParser(max_head_bytes=self._max)
        reference.expect(self._method, upgrade=self._upgrade)
        return reference

    def _cold(self, head: bytes) -> ResponseHead:
        """The reference decides a head the fast path does not take."""
        event = self._reference_head(head)
        if not isinstance(event, ResponseHead):  # cannot be: the head is complete
            raise self._fail(f"the reference parser read no head from {head[:40]!r}")
        self._frame(event)
        return event
