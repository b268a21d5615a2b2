"""The proxy's own serialisation (eventproxy_dataplane._wire): what it writes parses back, with
every parser, to what it meant; and the client framing rules."""

from __future__ import annotations

import pytest

from eventproxy_dataplane._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    RequestHead,
    ResponseHead,
    parser_classes,
)
from eventproxy_dataplane._wire import (
    AS_IS,
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    body_bytes,
    chunk,
    client_framing,
    client_response_head,
    end_bytes,
    last_chunk,
    request_head,
)
from support.backends import PARSERS


def _events(parser: object, data: bytes) -> list[object]:
    parser.feed(data)  # type: ignore[attr-defined]
    out: list[object] = []
    while True:
        event = parser.next_event()  # type: ignore[attr-defined]
        if event is NEED_DATA or event is PAUSED:
            return out
        out.append(event)


@pytest.mark.parametrize(
    ("status", "head", "length", "client_11", "framing"),
    [
        (200, True, 10, True, NO_BODY),
        (204, False, None, True, NO_BODY),
        (304, False, 5, False, NO_BODY),
        (200, False, 10, True, AS_IS),
        (200, False, 0, False, AS_IS),
        (200, False, None, True, CHUNKED),
        (500, False, None, False, UNTIL_CLOSE),
    ],
)
def test_client_framing(
    status: int, head: bool, length: int | None, client_11: bool, framing: int
) -> None:
    assert (
        client_framing(status=status, head_request=head, content_length=length, client_11=client_11)
        == framing
    )


def test_body_pieces() -> None:
    assert chunk(b"") == b""  # an empty chunk would end the body
    assert chunk(b"x" * 17) == b"11\r\n" + b"x" * 17 + b"\r\n"
    assert last_chunk() == b"0\r\n\r\n"
    assert last_chunk([(b"x-t", b"1")]) == b"0\r\nx-t: 1\r\n\r\n"
    assert body_bytes(NO_BODY, b"abc") == b""
    assert body_bytes(AS_IS, b"abc") == b"abc"
    assert body_bytes(UNTIL_CLOSE, b"abc") == b"abc"
    assert body_bytes(CHUNKED, b"abc") == b"3\r\nabc\r\n"
    assert end_bytes(AS_IS, [(b"x-t", b"1")]) == b""
    assert end_bytes(CHUNKED, [(b"x-t", b"1")]) == b"0\r\nx-t: 1\r\n\r\n"


@pytest.mark.parametrize("parser", PARSERS)
def test_a_chunked_response_parses_back(parser: str) -> None:
    head = client_response_head(200, b"OK", [(b"x-a", b"b c")], framing=CHUNKED, close=False)
    data = head + body_bytes(CHUNKED, b"hello") + end_bytes(CHUNKED, [(b"x-sum", b"5")])
    response_parser = parser_classes(parser)[1](65536)
    response_parser.expect(b"GET")
    events = _events(response_parser, data)
    assert [type(e) for e in events] == [ResponseHead, Body, EndOfMessage]
    first = events[0]
    assert type(first) is ResponseHead
    assert first.status == 200 and first.chunked and first.keep_alive
    assert first.headers == [(b"x-a", b"b c"), (b"transfer-encoding", b"chunked")]
    assert events[1].data == b"hello"  # type: ignore[attr-defined]
    assert events[2].trailers == [(b"x-sum", b"5")]  # type: ignore[attr-defined]


@pytest.mark.parametrize("parser", PARSERS)
def test_a_closing_response_says_so(parser: str) -> None:
    head = client_response_head(200, b"OK", [], framing=UNTIL_CLOSE, close=False)
    response_parser = parser_classes(parser)[1](65536)
    response_parser.expect(b"GET")
    events = _events(response_parser, head + b"until eof")
    response_parser.feed(b"")
    events += _events(response_parser, b"")
    first = events[0]
    assert type(first) is ResponseHead and not first.keep_alive
    assert (b"connection", b"close") in first.headers
    assert [type(e) for e in events[1:]] == [Body, EndOfMessage]


@pytest.mark.parametrize("parser", PARSERS)
def test_a_request_head_parses_back(parser: str) -> None:
    data = request_head(b"PUT", b"/a?b", [(b"host", b"x"), (b"content-length", b"2")]) + b"ok"
    request_parser = parser_classes(parser)[0](65536)
    events = _events(request_parser, data)
    assert [type(e) for e in events] == [RequestHead, Body, EndOfMessage]
    first = events[0]
    assert type(first) is RequestHead
    assert (first.method, first.target, first.http_version) == (b"PUT", b"/a?b", b"1.1")
    assert first.content_length == 2 and first.keep_alive
