"""Request and response framing, byte for byte: what the backend (or the client) receives.

Raw bytes go in; the exact bytes the backend received are checked (``RawBackend`` records
them). Issue 12: a ``Content-Length`` no 64-bit parser can hold is refused, never forwarded;
trailer fields that may not appear in a trailer section (framing, routing, authentication) are
dropped, in both directions; a backend's absurd or conflicting length never reaches the client.
"""

from __future__ import annotations

import anyio
import pytest

from eventproxy_dataplane import ProxySettings
from support.backends import RawBackend, make_table, raw_exchange, running_proxy, status_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]

# what the proxy adds to every forwarded request from 127.0.0.1 with ``Host: x``
FORWARDED = (
    b"x-forwarded-for: 127.0.0.1\r\nx-real-ip: 127.0.0.1\r\nx-forwarded-proto: http\r\n"
    b"x-forwarded-host: x\r\nx-forwarded-port: 80\r\n"
)
FORBIDDEN_TRAILERS = (
    b"Content-Length: 50\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Host: evil.test\r\n"
    b"Trailer: X-Sum\r\n"
    b"Authorization: Basic YWRtaW46YWRtaW4=\r\n"
    b"Proxy-Authorization: Basic eDp5\r\n"
    b"Cookie: session=stolen\r\n"
    b"Set-Cookie: session=stolen\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Real-Ip: 6.6.6.6\r\n"
    b"Forwarded: for=6.6.6.6\r\n"
    b"Connection: keep-alive\r\n"
    b"Expect: 100-continue\r\n"
    b"Range: bytes=0-1\r\n"
    b"Content-Type: text/evil\r\n"
    b"Content-Encoding: gzip\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Max-Forwards: 0\r\n"
)


async def _exchange(raw: bytes, reply: bytes | None = None) -> tuple[bytes, RawBackend]:
    async with anyio.create_task_group() as tg:
        backend = RawBackend() if reply is None else RawBackend(reply=reply)
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            out = await raw_exchange(proxy.port, raw)  # returns once the proxy closed
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    return out, backend


# -- Content-Length ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "length",
    [
        b"18446744073709551616",  # 2^64: a parser wrapping at 64 bits reads 0
        b"18446744073709551621",  # 2^64 + 5: ... reads 5
        b"9223372036854775808",  # 2^63: a signed 64-bit parser overflows
        b"99999999999999999999",  # the largest h11 reads (20 digits)
        b"09223372036854775808",  # 2^63 with a leading zero
    ],
)
async def test_content_length_above_int64_is_refused_and_never_forwarded(length: bytes) -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    out, backend = await _exchange(raw)
    assert status_of(out) == 400, out
    assert out.count(b"HTTP/1.1 ") == 1
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert backend.connections == 0
    assert backend.all_bytes == b""


async def test_largest_signed_64_bit_length_is_forwarded_as_is() -> None:
    # 2^63-1 is a length a backend can hold: forwarded; the client then stops short of it
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 9223372036854775807\r\n\r\nhello"
    async with anyio.create_task_group() as tg:
        backend = RawBackend()
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as client:
                await client.send(raw)
                await backend.wait_for(lambda: len(backend.all_bytes) >= len(raw))  # body too
                await client.send_eof()  # the body is cut short: 400, both sides closed
                out = bytearray()
                with anyio.fail_after(5):
                    while True:
                        try:
                            out += await client.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    assert status_of(bytes(out)) == 400
    assert backend.all_bytes == (
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 9223372036854775807\r\n"
        + FORWARDED
        + b"\r\nhello"
    )


@pytest.mark.parametrize(
    ("spelling", "forwarded"),
    [
        (b"005", b"5"),
        (b"0000000000000000005", b"5"),  # 19 digits, value 5
        (b"5, 5", b"5"),  # a list of one value, as RFC 9110 section 8.6 allows
        (b"5", b"5"),
    ],
)
async def test_content_length_is_forwarded_in_plain_decimal(
    spelling: bytes, forwarded: bytes
) -> None:
    raw = (
        b"POST /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
        + spelling
        + b"\r\n\r\nhello"
    )
    out, backend = await _exchange(raw)
    assert status_of(out) == 200
    assert backend.all_bytes == (
        b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: "
        + forwarded
        + b"\r\n"
        + FORWARDED
        + b"\r\nhello"
    )


# -- request trailers ----------------------------------------------------------------------


async def test_forbidden_request_trailers_are_dropped() -> None:
    raw = (
        b"POST /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n" + FORBIDDEN_TRAILERS + b"X-Other: 2\r\n\r\n"
    )
    out, backend = await _exchange(raw)
    assert status_of(out) == 200
    assert backend.all_bytes == (
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        + FORWARDED
        + b"\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\nx-other: 2\r\n\r\n"
    )
    assert backend.requests[0].trailers == [(b"x-sum", b"1"), (b"x-other", b"2")]


async def test_forbidden_request_trailers_are_dropped_when_the_body_is_streamed() -> None:
    # the head arrives first and is forwarded; the body (and trailers) follow in a second write,
    # through the streaming path
    head = b"POST /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    rest = b"5\r\nhello\r\n0\r\n" + FORBIDDEN_TRAILERS + b"\r\n"
    async with anyio.create_task_group() as tg:
        backend = RawBackend()
        await tg.start(backend.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [backend.url])})) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as client:
                await client.send(head)
                with anyio.fail_after(5):
                    await backend.head_seen.wait()
                await client.send(rest)
                out = bytearray()
                with anyio.fail_after(5):
                    while True:
                        try:
                            out += await client.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    assert status_of(bytes(out)) == 200
    assert backend.all_bytes == (
        b"POST /t HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
        + FORWARDED
        + b"\r\n5\r\nhello\r\n0\r\n\r\n"
    )


# -- the response side ---------------------------------------------------------------------

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("length", [b"18446744073709551616", b"9223372036854775808"])
async def test_backend_content_length_above_int64_is_a_bad_gateway(length: bytes) -> None:
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: " + length + b"\r\n\r\nhi"
    out, backend = await _exchange(GET, reply)
    assert status_of(out) == 502
    assert length not in out
    assert len(backend.requests) == 1


async def test_backend_content_length_with_chunked_is_reframed_as_chunked() -> None:
    # RFC 9112 section 6.3: Transfer-Encoding wins; the Content-Length must not be passed on
    reply = (
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    out, _ = await _exchange(GET, reply)
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200
    assert b"content-length" not in head.lower()
    assert b"\r\ntransfer-encoding: chunked" in head.lower()
    assert body == b"5\r\nhello\r\n0\r\n\r\n"


async def test_backend_content_length_with_leading_zeros_is_plain_decimal() -> None:
    out, _ = await _exchange(GET, b"HTTP/1.1 200 OK\r\nContent-Length: 002\r\n\r\nok")
    assert out.endswith(b"\r\ncontent-length: 2\r\nConnection: close\r\n\r\nok"), out


CHUNKED_WITH_TRAILERS = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
    b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n" + FORBIDDEN_TRAILERS + b"\r\n"
)


async def test_backend_trailers_reach_an_http11_client_filtered() -> None:
    out, _ = await _exchange(GET, CHUNKED_WITH_TRAILERS)
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200
    assert b"trailer:" not in head.lower()  # hop-by-hop
    assert body == b"5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n"


async def test_backend_trailers_are_dropped_for_an_http10_client() -> None:
    out, _ = await _exchange(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n", CHUNKED_WITH_TRAILERS)
    head, _, body = out.partition(b"\r\n\r\n")
    assert status_of(out) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello"


# -- max_body_bytes ------------------------------------------------------------------------


async def _exchange_limited(raw: bytes, limit: int) -> tuple[bytes, RawBackend]:
    async with anyio.create_task_group() as tg:
        backend = RawBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, ProxySettings(max_body_bytes=limit)) as proxy:
            out = await raw_exchange(proxy.port, raw)
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    return out, backend


async def test_content_length_above_the_body_limit_is_413_and_never_forwarded() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nhello!" + b"GET / HTTP/1.1\r\n"
    out, backend = await _exchange_limited(raw, 5)
    assert status_of(out) == 413
    assert b"\r\nconnection: close\r\n" in out.lower()
    assert backend.connections == 0


async def test_body_at_the_limit_is_forwarded() -> None:
    raw = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    out, backend = await _exchange_limited(raw, 5)
    assert status_of(out) == 200
    assert backend.requests[0].body == b"hello"
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n"
    )
    out, backend = await _exchange_limited(raw, 5)
    assert status_of(out) == 200
    assert backend.requests[0].body == b"hello"


async def test_chunked_body_above_the_limit_in_the_first_read_is_413_and_never_forwarded() -> None:
    raw = (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nhello!\r\n0\r\n\r\n"
    )
    out, backend = await _exchange_limited(raw, 5)
    assert status_of(out) == 413
    assert backend.connections == 0


async def test_chunked_body_growing_past_the_limit_is_413_and_the_backend_is_cut_off() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n"
    async with anyio.create_task_group() as tg:
        backend = RawBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, ProxySettings(max_body_bytes=5)) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as client:
                await client.send(head)
                await backend.wait_for(lambda: backend.all_bytes.endswith(b"3\r\nhel\r\n"))
                await client.send(b"3\r\nlo!\r\n0\r\n\r\n")
                out = bytearray()
                with anyio.fail_after(5):
                    while True:
                        try:
                            out += await client.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            break
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    assert status_of(bytes(out)) == 413
    # the backend got the first chunk only, never a complete request
    assert backend.all_bytes.endswith(b"\r\n\r\n3\r\nhel\r\n")
    assert backend.requests[0].body == b"hel" and backend.requests[0].trailers == []
    assert backend.errors  # its h11 saw the connection end mid-body
