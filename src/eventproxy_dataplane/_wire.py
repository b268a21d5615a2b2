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


# How a response body is framed for the client.
NO_BODY = 0  # HEAD, 204, 304: the head only
AS_IS = 1  # the backend's Content-Length: body bytes unchanged
CHUNKED = 2  # no length, HTTP/1.1 client: re-chunked
UNTIL_CLOSE = 3  # no length, HTTP/1.0 client: delimited by closing the connection


def client_framing(
    *, status: int, head_request: bool, content_length: int | None, client_11: bool
) -> int:
    """How the proxy frames a final response (status >= 200) for its client."""
    if head_request or status == 204 or status == 304:
        return NO_BODY
    if content_length is not None:
        return AS_IS
    return CHUNKED if client_11 else UNTIL_CLOSE


def client_response_head(
    status: int,
    reason_phrase: bytes,
    headers: list[Header],
    *,
    framing: int,
    close: bool,
) -> bytes:
    """The head of a final response for the client: ``headers`` (already stripped of
    hop-by-hop fields) plus the framing field and ``Connection: close`` as needed."""
    if framing == CHUNKED:
        headers.append((b"Transfer-Encoding", b"chunked"))
    if close or framing == UNTIL_CLOSE:
        headers.append((b"Connection", b"close"))
    return response_head(status, reason_phrase, headers)


def body_bytes(framing: int, data: bytes) -> bytes:
    """A piece of the response body as it goes to the client."""
    if framing == CHUNKED:
        return chunk(data)
    if framing == NO_BODY:
        return b""
    return data


def end_bytes(framing: int, trailers: Iterable[Header]) -> bytes:
    """The end of the response body for the client (trailers only when chunked)."""
    return last_chunk(trailers) if framing == CHUNKED else b""
