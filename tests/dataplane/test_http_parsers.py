"""The parser interface (eventproxy_dataplane._http), run against every parser installed.

Byte streams are fed split at every offset (and byte by byte): the events must not depend on
how the bytes arrive.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from eventproxy_dataplane._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    ParseError,
    ParserUsageError,
    RequestHead,
    RequestParser,
    ResponseHead,
    ResponseParser,
    parser_classes,
    resolve_parser,
)
from support import backends
from support.hostile_cases import CASES

PARSERS = backends.PARSERS


@pytest.fixture(params=PARSERS)
def parser_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def new_request_parser(parser_name: str) -> Callable[..., RequestParser]:
    factory = parser_classes(parser_name)[0]
    return lambda max_head_bytes=65536: factory(max_head_bytes)


@pytest.fixture
def new_response_parser(parser_name: str) -> Callable[..., ResponseParser]:
    factory = parser_classes(parser_name)[1]
    return lambda max_head_bytes=65536: factory(max_head_bytes)


def _splits(data: bytes) -> list[list[bytes]]:
    """``data`` whole, split in two at every offset, and byte by byte."""
    out = [[data]]
    out += [[data[:i], data[i:]] for i in range(1, len(data))]
    out.append([data[i : i + 1] for i in range(len(data))])
    return out


def _drain(parser: RequestParser | ResponseParser, chunks: list[bytes]) -> list[object]:
    """Feed ``chunks`` one by one, taking every event out after each; bodies merged."""
    events: list[object] = []
    for chunk in chunks:
        parser.feed(chunk)
        while True:
            event = parser.next_event()
            if event is NEED_DATA or event is PAUSED:
                break
            if type(event) is Body and events and type(events[-1]) is Body:
                events[-1] = Body(events[-1].data + event.data)  # type: ignore[attr-defined]
            else:
                events.append(event)
    return events


def _heads(events: list[object]) -> list[object]:
    return [e for e in events if type(e) in (RequestHead, ResponseHead)]


def test_parser_names_resolve() -> None:
    assert resolve_parser("h11") == "h11"
    assert resolve_parser("auto") in ("h11", "httptools")
    with pytest.raises(ValueError, match="unknown parser 'fast'"):
        resolve_parser("fast")


# -- requests ------------------------------------------------------------------------------

GET = b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-Thing:  v 1 \r\n\r\n"


def test_get_at_every_split(new_request_parser: Callable[..., RequestParser]) -> None:
    for chunks in _splits(GET):
        parser = new_request_parser()
        events = _drain(parser, chunks)
        assert len(events) == 2, chunks
        head, end = events
        assert type(head) is RequestHead
        assert (head.method, head.target, head.http_version) == (b"GET", b"/a?b=1", b"1.1")
        assert head.headers == [(b"host", b"x"), (b"x-thing", b"v 1")]
        assert head.keep_alive and not head.chunked and not head.expect_continue
        assert head.content_length is None
        assert type(end) is EndOfMessage and end.trailers == []
        assert parser.next_event() is PAUSED


def test_content_length_body_at_every_split(
    new_request_parser: Callable[..., RequestParser],
) -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    for chunks in _splits(raw):
        parser = new_request_parser()
        events = _drain(parser, chunks)
        head = events[0]
        assert type(head) is RequestHead and head.content_length == 11 and not head.chunked
        assert [type(e) for e in events[1:]] == [Body, EndOfMessage], chunks
        assert events[1].data == b"hello world"  # type: ignore[attr-defined]


def test_chunked_body_with_trailers_at_every_split(
    new_request_parser: Callable[..., RequestParser],
) -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 3\r\n\r\n"
    )
    for chunks in _splits(raw):
        parser = new_request_parser()
        events = _drain(parser, chunks)
        head = events[0]
        assert type(head) is RequestHead and head.chunked and head.content_length is None
        assert [type(e) for e in events[1:]] == [Body, EndOfMessage], chunks
        assert events[1].data == b"hello world"  # type: ignore[attr-defined]
        assert events[2].trailers == [(b"x-sum", b"3")]  # type: ignore[attr-defined]


def test_pipelined_requests_wait_for_the_next_cycle(
    new_request_parser: Callable[..., RequestParser],
) -> None:
    second = b"POST /2 HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok"
    for chunks in _splits(GET + second):
        parser = new_request_parser()
        first = _drain(parser, chunks)
        assert [type(e) for e in first] == [RequestHead, EndOfMessage]
        assert parser.next_event() is PAUSED  # the second request stays buffered
        parser.start_next_cycle()
        rest: list[object] = []
        while True:
            event = parser.next_event()
            if event is PAUSED:
                break
            assert event is not NEED_DATA, chunks
            rest.append(event)
        assert [type(e) for e in rest] == [RequestHead, Body, EndOfMessage]
        assert rest[0].target == b"/2"  # type: ignore[attr-defined]


def test_start_next_cycle_out_of_turn_is_refused(
    new_request_parser: Callable[..., RequestParser],
) -> None:
    parser = new_request_parser()
    parser.feed(GET[:10])
    assert parser.next_event() is NEED_DATA
    with pytest.raises(ParserUsageError):
        parser.start_next_cycle()
    closing = new_request_parser()
    _drain(closing, [b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    with pytest.raises(ParserUsageError):
        closing.start_next_cycle()


def test_keep_alive_and_expect(new_request_parser: Callable[..., RequestParser]) -> None:
    cases = {
        b"GET / HTTP/1.0\r\n\r\n": (False, b"1.0"),
        b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": (False, b"1.0"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive, Close\r\n\r\n": (False, b"1.1"),
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n": (True, b"1.1"),
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n": (True, b"1.1"),
    }
    for raw, (keep_alive, version) in cases.items():
        parser = new_request_parser()
        head = _drain(parser, [raw])[0]
        assert type(head) is RequestHead
        assert (head.keep_alive, head.http_version) == (keep_alive, version), raw
    parser = new_request_parser()
    head = _drain(parser, [b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"])[0]
    assert type(head) is RequestHead
    assert head.headers[1] == (b"x-a", b"a b")  # obs-fold: replaced by a space
    parser = new_request_parser()
    head = _drain(
        parser,
        [b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n"],
    )[0]
    assert type(head) is RequestHead and head.expect_continue


def test_eof_between_requests_is_clean(new_request_parser: Callable[..., RequestParser]) -> None:
    parser = new_request_parser()
    _drain(parser, [GET])
    parser.start_next_cycle()
    parser.feed(b"")
    assert parser.next_event() is NEED_DATA
    assert parser.eof


@pytest.mark.parametrize(
    "raw",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"GET / HTTP/1.1\r\nHost: x\r\n",
    ],
    ids=["length", "chunked", "head"],
)
def test_eof_inside_a_request_is_400(
    new_request_parser: Callable[..., RequestParser], raw: bytes
) -> None:
    parser = new_request_parser()
    with pytest.raises(ParseError) as info:
        _drain(parser, [raw, b""])
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n"
         b"\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBig: " + b"a" * 2000, 431),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    ],
    ids=["cl-te", "cl-huge", "cl-conflict", "space-colon", "nul", "h2", "h09",
         "oversize", "bad-chunk"],
)  # fmt: skip
def test_malformed_requests(
    new_request_parser: Callable[..., RequestParser], raw: bytes, status: int
) -> None:
    for chunks in ([raw], [raw[i : i + 7] for i in range(0, len(raw), 7)]):
        parser = new_request_parser(max_head_bytes=1024)
        with pytest.raises(ParseError) as info:
            _drain(parser, chunks)
        assert info.value.status == status
        with pytest.raises(ParseError) as again:  # dead: the same error on every call
            parser.next_event()
        assert again.value is info.value


def test_upgrade_hands_over_the_trailing_bytes(
    new_request_parser: Callable[..., RequestParser],
) -> None:
    raw = (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        b"\x81\x02hi"
    )
    parser = new_request_parser()
    events = _drain(parser, [raw])
    assert [type(e) for e in events] == [RequestHead, EndOfMessage]
    assert parser.next_event() is PAUSED
    assert parser.take_trailing() == b"\x81\x02hi"


def test_hostile_corpus_first_answer(new_request_parser: Callable[..., RequestParser]) -> None:
    """A parser that refuses a case's first request gives the corpus's status; one the corpus
    lets through (a 2xx first) is not refused by the parser."""
    for case in CASES:
        parser = new_request_parser()
        chunks = [case.raw, b""] if case.client_eof else [case.raw]
        first = case.statuses[0] if case.statuses else None
        try:
            events = _drain(parser, chunks)
        except ParseError as exc:
            assert exc.status == first, case.name
            continue
        if first is not None and first < 300:
            assert _heads(events), case.name


# -- responses -----------------------------------------------------------------------------


def _response(parser: ResponseParser, chunks: list[bytes], method: bytes = b"GET") -> list[object]:
    parser.expect(method)
    return _drain(parser, chunks)


def test_response_with_length_at_every_split(
    new_response_parser: Callable[..., ResponseParser],
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"
    for chunks in _splits(raw):
        parser = new_response_parser()
        events = _response(parser, chunks)
        head = events[0]
        assert type(head) is ResponseHead
        assert (head.status, head.reason, head.http_version) == (200, b"OK", b"1.1")
        assert head.headers == [(b"content-length", b"5"), (b"x-a", b"b")]
        assert head.keep_alive and head.content_length == 5
        assert [type(e) for e in events[1:]] == [Body, EndOfMessage], chunks
        assert events[1].data == b"hello"  # type: ignore[attr-defined]
        assert parser.next_event() is PAUSED
        parser.start_next_cycle()
        assert type(_response(parser, [raw])[0]) is ResponseHead


def test_chunked_response_with_trailers_at_every_split(
    new_response_parser: Callable[..., ResponseParser],
) -> None:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"
    for chunks in _splits(raw):
        parser = new_response_parser()
        events = _response(parser, chunks)
        head = events[0]
        assert type(head) is ResponseHead and head.chunked and head.keep_alive
        assert [type(e) for e in events[1:]] == [Body, EndOfMessage], chunks
        assert events[2].trailers == [(b"x-t", b"1")]  # type: ignore[attr-defined]


def test_close_delimited_response_ends_at_eof(
    new_response_parser: Callable[..., ResponseParser],
) -> None:
    raw = b"HTTP/1.1 200 OK\r\n\r\nuntil the end"
    for chunks in _splits(raw):
        parser = new_response_parser()
        events = _response(parser, [*chunks, b""])
        head = events[0]
        assert type(head) is ResponseHead and not head.keep_alive
        assert head.content_length is None and not head.chunked
        assert [type(e) for e in events[1:]] == [Body, EndOfMessage]
        assert events[1].data == b"until the end"  # type: ignore[attr-defined]


def test_head_and_no_body_statuses(new_response_parser: Callable[..., ResponseParser]) -> None:
    parser = new_response_parser()
    events = _response(parser, [b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"], b"HEAD")
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]
    assert events[0].keep_alive  # type: ignore[attr-defined]
    parser.start_next_cycle()
    events = _response(parser, [b"HTTP/1.1 304 Not Modified\r\n\r\n"])
    assert [type(e) for e in events] == [ResponseHead, EndOfMessage]


def test_informational_then_final(new_response_parser: Callable[..., ResponseParser]) -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"
    for chunks in _splits(raw):
        parser = new_response_parser()
        events = _response(parser, chunks)
        assert [e.status for e in _heads(events)] == [100, 204], chunks  # type: ignore[attr-defined]
        assert type(events[-1]) is EndOfMessage


def test_switching_protocols(new_response_parser: Callable[..., ResponseParser]) -> None:
    parser = new_response_parser()
    parser.expect(b"GET", upgrade=True)
    events = _drain(
        parser,
        [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: upgrade\r\n\r\nxy"
        ],
    )
    assert [type(e) for e in events] == [ResponseHead]
    assert events[0].status == 101  # type: ignore[attr-defined]
    assert parser.next_event() is PAUSED
    assert parser.take_trailing() == b"xy"


def test_response_cl_and_te_chunked_wins(
    new_response_parser: Callable[..., ResponseParser],
) -> None:
    parser = new_response_parser()
    events = _response(
        parser,
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\na\r\n0\r\n\r\n"
        ],
    )
    head = events[0]
    assert type(head) is ResponseHead and head.chunked and head.content_length is None
    assert events[1].data == b"a"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",  # then EOF
        b"HTTP/1.1 200 OK\r\n",  # EOF in the head
        b"",  # EOF before any response
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",  # no upgrade was asked for
        b"HTTP/2.0 200 OK\r\n\r\n",
    ],
    ids=["cl-huge", "bad-status", "short-body", "short-head", "nothing", "unasked-101", "h2"],
)
def test_malformed_responses_are_502(
    new_response_parser: Callable[..., ResponseParser], raw: bytes
) -> None:
    parser = new_response_parser()
    with pytest.raises(ParseError) as info:
        _response(parser, [raw, b""])
    assert info.value.status == 502


def test_response_eof_while_idle_is_clean(
    new_response_parser: Callable[..., ResponseParser],
) -> None:
    parser = new_response_parser()
    _response(parser, [b"HTTP/1.1 204 No Content\r\n\r\n"])
    parser.start_next_cycle()
    parser.feed(b"")
    assert parser.next_event() is NEED_DATA
    assert parser.eof


def test_settings_and_cli_name_the_parser() -> None:
    from eventproxy_dataplane import ProxySettings
    from eventproxy_dataplane._errors import SettingsError
    from eventproxy_dataplane.cli import build_parser, settings_from_args

    assert ProxySettings().parser == "auto"
    with pytest.raises(SettingsError, match="parser must be one of auto, h11, httptools"):
        ProxySettings(parser="llhttp")
    args = build_parser().parse_args(["--config", "x.toml", "--parser", "h11"])
    assert settings_from_args(args).parser == "h11"
