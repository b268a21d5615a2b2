"""The two HTTP/1.1 parsers behind the connection core give the same answer for every input.

The h11 parser is the reference; the httptools (llhttp) one must match it event for event on
what h11 accepts and status for status on what it refuses. Pure: bytes in, events out, no
sockets. Three kinds of test:

- the hostile corpus (``support.hostile_cases``) parametrised over both parsers, each checked
  against the statuses the corpus gives (where the parser, not the proxy, decides), and a
  cross-check that both produce the same outcome with the bytes split at every offset;
- valid requests and responses (generated with hypothesis: framings, pipelining, 1xx, HEAD,
  trailers, odd-but-legal spellings) split at random offsets: the same events;
- the same messages with random byte mutations: the same events or the same refusal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventproxy_dataplane._http import (
    NEED_DATA,
    PAUSED,
    Body,
    EndOfMessage,
    ParseError,
    RequestHead,
    ResponseHead,
)
from eventproxy_dataplane._parse_h11 import H11RequestParser, H11ResponseParser
from support import in_ci
from support.hostile_cases import CASES, Case

try:
    from eventproxy_dataplane._parse_httptools import (
        HttptoolsRequestParser,
        HttptoolsResponseParser,
    )
except ImportError:  # pragma: no cover - the `fast` extra is not installed
    if in_ci():
        raise RuntimeError(
            "httptools is not installed: CI must run the httptools parser "
            "(pip install 'eventproxy[fast]'; see noxfile.py)"
        ) from None
    pytest.skip("httptools not installed (the `fast` extra)", allow_module_level=True)

MAX_HEAD = 64 * 1024
Outcome = list[tuple[Any, ...]]

REQUEST_PARSERS: dict[str, Callable[..., Any]] = {
    "h11": H11RequestParser,
    "httptools": HttptoolsRequestParser,
}
RESPONSE_PARSERS: dict[str, Callable[..., Any]] = {
    "h11": H11ResponseParser,
    "httptools": HttptoolsResponseParser,
}


def _describe(event: object) -> tuple[Any, ...]:
    if isinstance(event, RequestHead):
        return (
            "request",
            bytes(event.method),
            bytes(event.target),
            bytes(event.http_version),
            tuple((bytes(n), bytes(v)) for n, v in event.headers),
            event.keep_alive,
            event.chunked,
            event.content_length,
            event.expect_continue,
        )
    if isinstance(event, ResponseHead):
        return (
            "response",
            event.status,
            bytes(event.reason),
            bytes(event.http_version),
            tuple((bytes(n), bytes(v)) for n, v in event.headers),
            event.keep_alive,
            event.chunked,
            event.content_length,
        )
    if isinstance(event, EndOfMessage):
        return ("end", tuple((bytes(n), bytes(v)) for n, v in event.trailers))
    raise AssertionError(f"unexpected event {event!r}")


def _drain(parser: Any, out: Outcome, methods: list[bytes] | None) -> bool:
    """Take events until NEED_DATA; False once the conversation is over (error or close)."""
    while True:
        try:
            event = parser.next_event()
        except ParseError as exc:
            out.append(("error", exc.status))
            return False
        if event is NEED_DATA:
            return True
        if event is PAUSED:
            head = next(e for e in reversed(out) if e[0] in ("request", "response"))
            if head[:2] == ("response", 101) or head[:2] == ("request", b"CONNECT"):
                out.append(("switched", parser.take_trailing()))
                return False
            if not head[5]:  # not kept alive: the proxy closes here
                out.append(("closed", parser.take_trailing()))
                return False
            parser.start_next_cycle()
            if methods is not None:
                if not methods:
                    out.append(("no-more-requests",))
                    return False
                _expect(parser, methods.pop(0))
            continue
        if isinstance(event, Body):
            if out and out[-1][0] == "body":
                out[-1] = ("body", out[-1][1] + bytes(event.data))
            else:
                out.append(("body", bytes(event.data)))
            continue
        out.append(_describe(event))


def _expect(parser: Any, method: bytes) -> None:
    """``b"GET+upgrade"`` is a GET that proposed a protocol switch (a 101 may answer it)."""
    name, _, upgrade = method.partition(b"+")
    parser.expect(name, upgrade=bool(upgrade))


def run(
    factory: Callable[..., Any],
    chunks: Sequence[bytes],
    *,
    eof: bool = False,
    methods: Sequence[bytes] | None = None,
) -> Outcome:
    """Feed ``chunks`` one by one (then EOF if asked) and record the merged events."""
    parser = factory(max_head_bytes=MAX_HEAD)
    pending = None if methods is None else list(methods)
    if pending is not None:
        _expect(parser, pending.pop(0) if pending else b"GET")
    out: Outcome = []
    for chunk in chunks:
        parser.feed(chunk)
        if not _drain(parser, out, pending):
            return out
    if eof:
        parser.feed(b"")
        if not _drain(parser, out, pending):
            return out
    out.append(("need-data", parser.eof))
    return out


def _split(raw: bytes, offsets: Sequence[int]) -> list[bytes]:
    cuts = sorted({o for o in offsets if 0 < o < len(raw)})
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


# -- the hostile corpus ---------------------------------------------------------------------------

# cases the parsers accept and the proxy refuses (Host checks, forms of target, limits the proxy
# applies): listed so that a refusal moving between the two layers shows up here
PROXY_REFUSES = {
    "host-obs-fold",
    "host-with-space",
    "host-with-slash",
    "host-with-at",
    "too-many-fields",
    "target-not-a-path",
    "connect-authority-form",
}


@pytest.mark.parametrize("parser", sorted(REQUEST_PARSERS))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case_on_each_parser(parser: str, case: Case) -> None:
    """Each parser refuses what the corpus refuses, with its status, and frames the rest.

    The bytes arrive in 16 KiB segments, as from a socket (a 2 MiB head is then seen growing
    past the limit: 431).
    """
    chunks = _split(case.raw, range(16384, len(case.raw), 16384))
    outcome = run(REQUEST_PARSERS[parser], chunks, eof=case.client_eof)
    heads = [e for e in outcome if e[0] == "request"]
    ended = [e for e in outcome if e[0] == "end"]
    errors = [e[1] for e in outcome if e[0] == "error"]
    refused = [s for s in case.statuses if s >= 400]
    if errors:
        assert errors == [case.statuses[len(ended)]], outcome
    elif refused:
        assert case.name in PROXY_REFUSES, (case.statuses, outcome)
    for forwarded, head in zip(case.forwarded, heads, strict=False):
        assert head[1] == forwarded.method
    if case.forwarded and not case.partial and not errors:
        bodies = []
        for event in outcome:
            if event[0] == "request":
                bodies.append(b"")
            elif event[0] == "body":
                bodies[-1] += event[1]
        assert bodies[: len(case.forwarded)] == [f.body for f in case.forwarded]


def _offsets(raw: bytes) -> range:
    """Every offset of a short case; every 13th (every 64 KiB for the 2 MiB head) of a long."""
    if len(raw) <= 1024:
        return range(1, len(raw))
    return range(1, len(raw), 13) if len(raw) <= 65536 else range(1, len(raw), 65536)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_case_same_answer_split_anywhere(case: Case) -> None:
    """Cross-check: both parsers give the same outcome, whole, split in two at every offset
    (every 13th of a long case), and byte by byte (a short case)."""
    whole = run(H11RequestParser, [case.raw], eof=case.client_eof)
    assert run(HttptoolsRequestParser, [case.raw], eof=case.client_eof) == whole
    if len(case.raw) <= 1024:
        single = [case.raw[i : i + 1] for i in range(len(case.raw))]
        reference = run(H11RequestParser, single, eof=case.client_eof)
        assert run(HttptoolsRequestParser, single, eof=case.client_eof) == reference
    for offset in _offsets(case.raw):
        chunks = _split(case.raw, [offset])
        reference = run(H11RequestParser, chunks, eof=case.client_eof)
        assert run(HttptoolsRequestParser, chunks, eof=case.client_eof) == reference, offset


# -- valid messages, generated --------------------------------------------------------------------

_TOKEN = st.text(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-!#$%&'*+.^_`|~",
    min_size=1,
    max_size=12,
)
_VALUE = st.text('abc xyz019/=;,:"()?@[]{}\t', min_size=0, max_size=20).map(str.strip)
_OWS = st.sampled_from(["", " ", "  ", "\t", " \t"])
_EXTRA_NAMES = ["x-a", "X-Custom", "Accept", "User-Agent", "Cookie", "Expect", "Connection"]


@st.composite
def _fields(draw: st.DrawFn) -> list[bytes]:
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.one_of(_TOKEN, st.sampled_from(_EXTRA_NAMES)))
        if name.lower() in ("connection", "expect"):
            value = draw(
                st.sampled_from(["close", "keep-alive", "Keep-Alive, foo", "100-continue", "x"])
            )
        else:
            value = draw(_VALUE)
        line = f"{name}:{draw(_OWS)}{value}{draw(_OWS)}".encode()
        if draw(st.integers(0, 9)) == 0:
            line += b"\xc3\xa9"  # obs-text
        lines.append(line)
    return lines


@st.composite
def _body(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    """Framing field lines and the framed body (content-length, chunked or none)."""
    kind = draw(st.sampled_from(["none", "length", "chunked", "length-zero"]))
    data = draw(st.binary(max_size=40))
    if kind == "none":
        return [], b""
    if kind == "length-zero":
        return [b"Content-Length: 0"], b""
    if kind == "length":
        spelling = draw(st.sampled_from(["%d", "0%d", "%d,%d", " %d "]))
        value = (spelling % ((len(data),) * spelling.count("%d"))).encode()
        return [b"Content-Length: " + value], data
    te = draw(st.sampled_from([b"chunked", b"Chunked", b"CHUNKED"]))
    out = b""
    rest = data
    while rest:
        size = draw(st.integers(1, len(rest)))
        ext = draw(st.sampled_from([b"", b";a=b", b";x", b" "]))
        hexsize = draw(st.sampled_from(["%x", "%X", "00%x"])) % size
        out += hexsize.encode() + ext + b"\r\n" + rest[:size] + b"\r\n"
        rest = rest[size:]
    trailers = draw(st.sampled_from([b"", b"X-Sum: 1\r\n", b"X-A: a\r\nX-B:  b \r\n"]))
    return [b"Transfer-Encoding: " + te], out + b"0\r\n" + trailers + b"\r\n"


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(
        st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"FOO"])
    )
    target = draw(
        st.sampled_from([b"/", b"/user/a/api?x=1&y=%20", b"*", b"http://x/abs", b"/a;b,c@d!$'()"])
    )
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
    framing, body = draw(_body())
    fields = [b"Host: x", *draw(_fields()), *framing]
    fields = draw(st.permutations(fields))
    eol = b"\r\n" if draw(st.integers(0, 9)) else b"\n"
    head = method + b" " + target + b" HTTP/" + version + eol
    for line in fields:
        if draw(st.integers(0, 14)) == 0:
            line += eol + b" folded"  # obs-fold, joined by h11 with a space
        head += line + eol
    return head + eol + body


@st.composite
def responses(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """One exchange of responses (1xx first, maybe) and the request methods they answer."""
    raw = b""
    methods = []
    for _ in range(draw(st.integers(1, 3))):
        method = draw(st.sampled_from([b"GET", b"HEAD", b"POST"]))
        methods.append(method)
        for _ in range(draw(st.integers(0, 2)) if draw(st.booleans()) else 0):
            raw += b"HTTP/1.1 " + draw(st.sampled_from([b"100 Continue", b"103 Early"]))
            raw += b"\r\n" + b"".join(line + b"\r\n" for line in draw(_fields())) + b"\r\n"
        status = draw(
            st.sampled_from(
                [
                    b"200 OK",
                    b"200",
                    b"201 ",
                    b"204 No Content",
                    b"304 Not Modified",
                    b"404 Not  Found",
                    b"500 x\xc3\xa9",
                ]
            )
        )
        version = draw(st.sampled_from([b"1.1", b"1.1", b"1.0"]))
        framing, body = draw(_body())
        fields = [*draw(_fields()), *framing]
        if not framing and draw(st.booleans()):
            pass  # delimited by the close
        raw += b"HTTP/" + version + b" " + status + b"\r\n"
        raw += b"".join(line + b"\r\n" for line in draw(st.permutations(fields))) + b"\r\n"
        if method != b"HEAD" and status[:3] not in (b"204", b"304"):
            raw += body
    if draw(st.integers(0, 4)) == 0:  # then a protocol switch, proposed or not
        methods.append(draw(st.sampled_from([b"GET+upgrade", b"GET+upgrade", b"GET"])))
        raw += b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
        raw += b"Connection: Upgrade\r\n\r\n" + draw(st.binary(max_size=20))
    return raw, methods


_OFFSETS = st.lists(st.integers(1, 400), max_size=6)
_FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FAST
@given(st.lists(requests(), min_size=1, max_size=3), _OFFSETS, st.booleans())
def test_valid_requests_same_events(raws: list[bytes], offsets: list[int], eof: bool) -> None:
    raw = b"".join(raws)
    chunks = _split(raw, offsets)
    reference = run(H11RequestParser, chunks, eof=eof)
    assert run(HttptoolsRequestParser, chunks, eof=eof) == reference


@_FAST
@given(responses(), _OFFSETS, st.booleans())
def test_valid_responses_same_events(
    exchange: tuple[bytes, list[bytes]], offsets: list[int], eof: bool
) -> None:
    raw, methods = exchange
    chunks = _split(raw, offsets)
    reference = run(H11ResponseParser, chunks, eof=eof, methods=methods)
    assert run(HttptoolsResponseParser, chunks, eof=eof, methods=methods) == reference


_NASTY = st.sampled_from(
    [
        b"\r",
        b"\n",
        b"\r\n",
        b"\x00",
        b"\t",
        b" ",
        b":",
        b",",
        b";",
        b"\x0b",
        b"\x0c",
        b"\x7f",
        b"\x01",
        b"\xff",
        b"0",
        b"9",
        b"f",
        b"-",
        b"/",
        b"H",
        b"Transfer-Encoding: chunked\r\n",
        b"Content-Length: 3\r\n",
        b"Host: y\r\n",
        b"HTTP/1.1",
        b"HTTP/2.0",
        b"  ",
    ]
)


@st.composite
def _mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(raw)))
        kind = draw(st.sampled_from(["insert", "replace", "delete"]))
        if kind == "delete":
            raw = raw[:at] + raw[at + 1 :]
        else:
            piece = draw(_NASTY)
            raw = raw[:at] + piece + raw[at + (1 if kind == "replace" else 0) :]
    return raw


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans())
def test_mutated_requests_same_answer(data: st.DataObject, eof: bool) -> None:
    raw = data.draw(_mutated(data.draw(requests())))
    chunks = _split(raw, data.draw(_OFFSETS))
    reference = run(H11RequestParser, chunks, eof=eof)
    assert run(HttptoolsRequestParser, chunks, eof=eof) == reference


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.booleans())
def test_mutated_responses_same_answer(data: st.DataObject, eof: bool) -> None:
    raw, methods = data.draw(responses())
    raw = data.draw(_mutated(raw))
    chunks = _split(raw, data.draw(_OFFSETS))
    reference = run(H11ResponseParser, chunks, eof=eof, methods=methods)
    assert run(HttptoolsResponseParser, chunks, eof=eof, methods=methods) == reference


# -- the fast path is taken, and llhttp is strict --------------------------------------------------


class _NoReference:
    def __init__(self, **_: object) -> None:
        raise AssertionError("the reference parser was used")


def test_ordinary_messages_never_reach_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The speed comes from llhttp: plain requests and responses take the fast path only."""
    from eventproxy_dataplane import _parse_httptools

    monkeypatch.setattr(_parse_httptools, "H11RequestParser", _NoReference)
    monkeypatch.setattr(_parse_httptools, "H11ResponseParser", _NoReference)
    requests = (
        b"GET /user/a/api HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"PUT /y HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    outcome = run(HttptoolsRequestParser, [requests])
    assert [e[0] for e in outcome] == [
        *("request", "end"),
        *("request", "body", "end") * 2,
        *("request", "end"),
        "need-data",
    ]
    responses = (
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n"
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n"
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end"
    )
    outcome = run(HttptoolsResponseParser, [responses], eof=True, methods=[b"GET"] * 4)
    assert [e[0] for e in outcome] == [
        *("response", "response", "body", "end"),
        *("response", "body", "end"),
        *("response", "end"),
        *("response", "body", "end"),
        "closed",  # the HTTP/1.0 body ended with the connection
    ]
    assert outcome[6] == ("end", ((b"x-t", b"1"),))


def test_unusual_heads_are_decided_by_the_reference() -> None:
    """What llhttp refuses and h11 accepts (obs-fold, bare LF, 5,5, HTTP/1.2) is h11's answer."""
    for raw in (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\nHost: x\n\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2,2\r\n\r\nok",
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        reference = run(H11RequestParser, [raw])
        assert reference[0][0] == "request", reference
        assert run(HttptoolsRequestParser, [raw]) == reference


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",  # CL+TE
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n",  # transfer_encoding
        b"GET / HTTP/1.1\r\nX-A: a\x00b\r\n\r\n",  # headers
        b"GET / HTTP/1.2\r\n\r\n",  # version
        b"GET / HTTP/1.1\nHost: x\r\n\r\n",  # optional_cr_before_lf
        b"GET / HTTP/1.1\rHost: x\r\n\r\n",  # optional_lf_after_cr
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",  # data_after_close
    ],
)
def test_llhttp_runs_with_every_leniency_off(head: bytes) -> None:
    """httptools leaves llhttp's leniencies at their strict default: each of these is refused."""
    import httptools

    parser = httptools.HttpRequestParser(object())
    with pytest.raises(httptools.HttpParserError):
        parser.feed_data(head)


@pytest.mark.parametrize("parser", sorted(RESPONSE_PARSERS))
def test_switching_protocols_hands_over_the_frame_after_the_head(parser: str) -> None:
    raw = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        b"\x81\x02hi"
    )
    factory = RESPONSE_PARSERS[parser]
    outcome = run(factory, _split(raw, [50, 90]), methods=[b"GET", b"GET+upgrade"])
    assert outcome[-1] == ("switched", b"\x81\x02hi")
    assert [e[1] for e in outcome if e[0] == "response"] == [200, 101]
    refused = run(factory, [raw], methods=[b"GET", b"GET"])  # no switch proposed: 502
    assert refused[-1] == ("error", 502)
