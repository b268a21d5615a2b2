"""The parser interface of the data plane's connection core: HTTP/1.1 events, no I/O.

Theory of operation: the connection core never sees h11 or httptools types. It feeds the bytes
a peer sent into a parser and takes events out, h11's two verbs:

    parser.feed(data)            # b"" means the peer half-closed (EOF)
    event = parser.next_event()  # RequestHead / ResponseHead, Body..., EndOfMessage,
                                 # NEED_DATA (feed more) or PAUSED (call start_next_cycle)

The parser decides the framing (Content-Length, chunked, close-delimited), so the defences
against request smuggling live in one place per parser and one corpus
(``tests/support/hostile_cases.py``) checks every parser gives the same answers. Events are
plain slotted classes built without validation: the parser has validated the bytes.

Two implementations: :mod:`._parse_h11` (``H11RequestParser``, ``H11ResponseParser``; the
reference, always installed) and :mod:`._parse_httptools` (``HttptoolsRequestParser``,
``HttptoolsResponseParser``; llhttp, importable only when httptools is installed).
:func:`parser_classes` picks them by name (``"h11"``, ``"httptools"``, ``"auto"``).

Rules both parsers follow (the contract; the hostile corpus tests them):

* Header names are lower-cased, values have their optional whitespace stripped, order is kept.
* ``keep_alive`` of a request: HTTP/1.1 without a ``close`` token in ``Connection``. An HTTP/1.0
  request never keeps the connection (as h11 serves it); ``keep_alive`` of a response: HTTP/1.1
  without ``close``, and a body framed by length or chunks (not by closing).
* ``http_version`` is ``b"1.0"`` or ``b"1.1"``: a higher 1.x minor version is read as 1.1
  (RFC 9110 section 2.5).
* An obs-fold line is joined to the field before it with one space (RFC 9112 section 5.2; the
  core then refuses a folded ``Host``).
* Refused with :class:`ParseError` (``status`` is what the client gets, 502 on the backend
  side): a request with both ``Content-Length`` and ``Transfer-Encoding`` (in a response the
  chunked framing wins and ``content_length`` is ``None``, RFC 9112 section 6.3); conflicting
  ``Content-Length`` values (identical repeats count as one); a length that is not plain
  decimal or above 2^63-1; a ``Transfer-Encoding`` other than exactly ``chunked``; bare CR;
  bare LF where CRLF is required; NUL or control bytes in names or values; whitespace before
  the colon; invalid chunk sizes; a request line that is not ``method SP target SP version``
  (400); a head above ``max_head_bytes`` (431); an HTTP major version other than 1 (505); a
  request that ends (EOF) in the middle of its head or body (400). The hostile corpus
  (``tests/support/hostile_cases.py``) is the arbiter of every case.
* After a :class:`ParseError` the parser is dead: every later call raises the same error.
* A request (or a response to a request sent with ``upgrade=True``) that switches protocols:
  after its ``EndOfMessage`` (a 101 response: after its head) the parser returns ``PAUSED``
  for good, and :meth:`take_trailing` hands the bytes that followed to the raw relay.
* Response heads with a status 100-199 other than 101 are informational: the parser returns
  them and then reads the next head of the same response.
* EOF at a message boundary is not an error: ``next_event`` returns ``NEED_DATA`` and ``eof``
  is true (the core then closes). On the backend side, EOF ends a close-delimited body
  (``EndOfMessage``); EOF anywhere else in a response raises ``ParseError`` (502).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Final, Protocol

from ._errors import DataPlaneError

Header = tuple[bytes, bytes]

PARSER_NAMES: Final = ("auto", "h11", "httptools")


class ParseError(DataPlaneError):
    """A peer sent bytes that are not acceptable HTTP/1.1.

    ``status`` is what the proxy answers the client (400, 413, 431, 501, 505; 502 for a
    backend); ``reason`` names what was wrong (it quotes the peer: debug log only).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


class ParserUsageError(DataPlaneError, RuntimeError):
    """The core called a parser out of turn (a bug in the core, never the peer's fault)."""


class RequestHead:
    """A request line and its header fields."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[Header],
        *,
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
        expect_continue: bool,
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version  # b"1.1" or b"1.0"
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length  # the framing the parser uses (None: chunked/none)
        self.expect_continue = expect_continue

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {self.http_version!r})"


class ResponseHead:
    """A status line and its header fields (informational ones too: status 100-199)."""

    __slots__ = (
        "chunked",
        "content_length",
        "headers",
        "http_version",
        "keep_alive",
        "reason",
        "status",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        http_version: bytes,
        headers: list[Header],
        *,
        keep_alive: bool,
        chunked: bool,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.reason = reason
        self.http_version = http_version
        self.headers = headers
        self.keep_alive = keep_alive
        self.chunked = chunked
        self.content_length = content_length

    def __repr__(self) -> str:
        return f"ResponseHead({self.status}, {self.reason!r})"


class Body:
    """A piece of a message body (de-chunked)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Body({self.data!r})"


class EndOfMessage:
    """The end of a message, with the trailer fields of a chunked body (else ``[]``)."""

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[Header] | None = None) -> None:
        self.trailers: list[Header] = trailers if trailers is not None else []

    def __repr__(self) -> str:
        return f"EndOfMessage({self.trailers!r})"


class NeedData:
    """The type of :data:`NEED_DATA`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


class Paused:
    """The type of :data:`PAUSED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PAUSED"


NEED_DATA: Final = NeedData()  # feed more bytes (or, when ``eof``: the peer closed cleanly)
PAUSED: Final = Paused()  # a message ended: start_next_cycle() first (or the protocol switched)

RequestEvent = RequestHead | Body | EndOfMessage | NeedData | Paused
ResponseEvent = ResponseHead | Body | EndOfMessage | NeedData | Paused


class RequestParser(Protocol):
    """Parses what a client sends (server side of one connection)."""

    eof: bool  # the peer half-closed

    def feed(self, data: bytes) -> None:
        """Add bytes the client sent; ``b""`` means EOF (later bytes are ignored)."""

    def next_event(self) -> RequestEvent:
        """The next event; raises :class:`ParseError` (and then on every call)."""

    def start_next_cycle(self) -> None:
        """After the ``EndOfMessage`` of a request with ``keep_alive``: parse the next one
        (pipelined bytes stayed buffered)."""

    def take_trailing(self) -> bytes:
        """The bytes after an upgrading request (the WebSocket relay takes them)."""


class ResponseParser(Protocol):
    """Parses what a backend sends (client side of one connection)."""

    eof: bool

    def expect(self, method: bytes, *, upgrade: bool = False) -> None:
        """Before each response: the request's method (HEAD has no body), and whether it
        asked to switch protocols (only then is a 101 accepted)."""

    def feed(self, data: bytes) -> None:
        """Add bytes the backend sent; ``b""`` is EOF (it ends a close-delimited body)."""

    def next_event(self) -> ResponseEvent:
        """The next event; raises :class:`ParseError` with status 502."""

    def start_next_cycle(self) -> None:
        """After the ``EndOfMessage`` of a response with ``keep_alive``."""

    def take_trailing(self) -> bytes:
        """The bytes after a 101 response's head."""


RequestParserFactory = Callable[[int], RequestParser]  # max_head_bytes -> parser
ResponseParserFactory = Callable[[int], ResponseParser]


def httptools_available() -> bool:
    """Whether the httptools parser can be used (httptools installed, our module present)."""
    try:
        importlib.import_module("eventproxy_dataplane._parse_httptools")
    except ImportError:
        return False
    return True


def resolve_parser(name: str) -> str:
    """``"h11"`` or ``"httptools"`` for a setting (``"auto"``: httptools when importable)."""
    if name == "auto":
        return "httptools" if httptools_available() else "h11"
    if name not in PARSER_NAMES:
        raise ValueError(f"unknown parser {name!r} (choose one of {', '.join(PARSER_NAMES)})")
    return name


def parser_classes(name: str) -> tuple[RequestParserFactory, ResponseParserFactory]:
    """The request and response parser factories for ``name`` (see :func:`resolve_parser`).

    Raises ``ImportError`` for ``"httptools"`` when it is not installed.
    """
    resolved = resolve_parser(name)
    if resolved == "httptools":
        mod: Any = importlib.import_module("eventproxy_dataplane._parse_httptools")
        return (
            lambda n: mod.HttptoolsRequestParser(max_head_bytes=n),
            lambda n: mod.HttptoolsResponseParser(max_head_bytes=n),
        )
    from ._parse_h11 import H11RequestParser, H11ResponseParser

    return (
        lambda n: H11RequestParser(max_head_bytes=n),
        lambda n: H11ResponseParser(max_head_bytes=n),
    )
