"""HTTP/1.1 serialisation for the proxy: message heads and chunked framing as bytes, no I/O.

The parsers (:mod:`._http`) validated every byte that came in, and what the proxy adds is its
own: nothing here validates again. Field names go out as the parser gave them (lower-case).
"""

from __future__ import annotations

from collections.abc import Iterable

Header = tuple[bytes, bytes]

_REASONS = {
    100: b"Continue",
    101: b"Switching Protocols",
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}
LAST_CHUNK = b"0\r\n\r\n"


def reason(status: int) -> bytes:
    """The standard reason phrase of ``status`` (``b""`` when we have none)."""
    return _REASONS.get(status, b"")


def _fields(headers: Iterable[Header]) -> bytes:
    return b"".join([name + b": " + value + b"\r\n" for name, value in headers])


def response_head(status: int, reason_phrase: bytes, headers: Iterable[Header]) -> bytes:
    """``HTTP/1.1 status reason`` and the fields, up to the empty line."""
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason_phrase, _fields(headers))


def request_head(method: bytes, target: bytes, headers: Iterable[Header]) -> bytes:
    """``method target HTTP/1.1`` and the fields, up to the empty line."""
    return method + b" " + target + b" HTTP/1.1\r\n" + _fields(headers) + b"\r\n"


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (``b""`` for empty data: an empty chunk would end it)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def last_chunk(trailers: Iterable[Header] = ()) -> bytes:
    """The end of a chunked body, with its trailer fields."""
    fields = _fields(trailers)
    if not fields:
        return LAST_CHUNK
    return b"0\r\n" + fields + b"\r\n"
