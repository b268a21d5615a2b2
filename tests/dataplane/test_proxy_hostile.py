"""Hostile and malformed requests: each is refused with the right status, the connection is
closed, and the backend never sees the request."""

from __future__ import annotations

import anyio
import pytest

from eventproxy_dataplane import ProxySettings
from support.backends import HTTPBackend, make_table, raw_exchange, running_proxy, status_of

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]

HOSTILE = {
    "content-length-and-transfer-encoding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
    ),
    "two-different-content-lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "content-length-list": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!",
        400,
    ),
    "invalid-chunk-size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "unsupported-transfer-coding": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    "header-without-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Broken\r\n\r\n", 400),
    "nul-in-header-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "bare-cr-in-header-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
    "lf-inside-header-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\nb\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n", 400),
    "two-host-headers": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "missing-host": (b"GET / HTTP/1.1\r\nX-A: a\r\n\r\n", 400),
    "bad-request-line": (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    "oversized-headers": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    "too-many-headers": (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: v\r\n" % i for i in range(60))
        + b"\r\n",
        431,
    ),
    "bad-target": (b"GET nonsense HTTP/1.1\r\nHost: x\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_request_is_refused_and_never_forwarded(case: str) -> None:
    raw, expected = HOSTILE[case]
    settings = ProxySettings(max_header_bytes=8192, max_header_count=50)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            out = await raw_exchange(proxy.port, raw, limit=5)  # returns once closed
            assert status_of(out) == expected, out
            assert out.count(b"HTTP/1.1 ") == 1, out
            assert b"connection: close" in out.lower()
            # the proxy is still healthy
            ok = await raw_exchange(
                proxy.port, b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            assert status_of(ok) == 200
        assert [r.target for r in backend.requests] == [b"/ok"]
        tg.cancel_scope.cancel()


async def test_slowloris_is_cut_off_after_the_header_timeout() -> None:
    settings = ProxySettings(header_timeout=1.5)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
            received = bytearray()
            started = anyio.current_time()
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:

                async def trickle() -> None:
                    for byte in request:
                        try:
                            await s.send(bytes([byte]))
                        except (anyio.BrokenResourceError, OSError):
                            return
                        await anyio.sleep(1.0)

                async with anyio.create_task_group() as inner:
                    inner.start_soon(trickle)
                    with anyio.fail_after(10):
                        while True:
                            try:
                                received += await s.receive()
                            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                                break
                    inner.cancel_scope.cancel()
            elapsed = anyio.current_time() - started
            assert status_of(bytes(received)) == 408
            assert 1.0 < elapsed < 5.0
        assert backend.requests == []
        tg.cancel_scope.cancel()


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    settings = ProxySettings(idle_timeout=0.3)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            out = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", limit=5)
            assert status_of(out) == 200
            assert out.count(b"HTTP/1.1") == 1  # no 408 for an idle connection
        tg.cancel_scope.cancel()
