"""The reverse proxy on real loopback sockets: forwarding, keep-alive, pooling, streaming."""

from __future__ import annotations

import anyio
import pytest

from eventproxy_dataplane import ProxySettings
from support.backends import (
    HTTPBackend,
    HTTPClient,
    make_table,
    raw_exchange,
    running_proxy,
    status_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


async def test_forwards_request_and_sets_forwarded_headers() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/user/a/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            reply = await c.request(
                "GET",
                "/user/a/x?q=1",
                host="hub.example:8000",
                headers=[
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-Host", "evil"),
                    ("Connection", "keep-alive, X-Secret"),
                    ("X-Secret", "hop"),
                    ("Keep-Alive", "timeout=5"),
                    ("TE", "trailers"),
                    ("Upgrade", "h2c"),
                    ("Proxy-Authorization", "Basic x"),
                    ("X-Kept", "yes"),
                ],
            )
            assert reply.status == 200
            got = backend.requests[0]
            assert got.target == b"/user/a/x?q=1"
            assert got.header(b"host") == b"hub.example:8000"
            assert got.header_all(b"x-forwarded-for") == [b"127.0.0.1"]
            assert got.header(b"x-forwarded-host") == b"hub.example:8000"
            assert got.header(b"x-forwarded-proto") == b"http"
            assert got.header(b"x-forwarded-port") == b"8000"
            assert got.header(b"x-kept") == b"yes"
            for hop in (b"connection", b"x-secret", b"keep-alive", b"te", b"upgrade"):
                assert got.header(hop) is None, hop
            assert got.header(b"proxy-authorization") is None
        tg.cancel_scope.cancel()


async def test_trusted_proxy_keeps_its_forwarded_headers() -> None:
    settings = ProxySettings(forwarded_trusted_ips=("10.0.0.0/8", "127.0.0.1"))
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with (
            running_proxy(table, settings) as proxy,
            await HTTPClient.connect(proxy.port) as c,
        ):
            reply = await c.request(
                "GET",
                "/",
                host="internal:8000",
                headers=[
                    ("X-Forwarded-For", "6.6.6.6"),
                    ("X-Forwarded-For", "7.7.7.7"),
                    ("X-Forwarded-Proto", "https"),
                    ("X-Forwarded-Host", "hub.example"),
                    ("X-Forwarded-Port", "443"),
                ],
            )
            assert reply.status == 200
            got = backend.requests[0]
            assert got.header_all(b"x-forwarded-for") == [b"6.6.6.6, 7.7.7.7, 127.0.0.1"]
            assert got.header(b"x-forwarded-proto") == b"https"
            assert got.header(b"x-forwarded-host") == b"hub.example"
            assert got.header(b"x-forwarded-port") == b"443"
            assert got.header(b"x-real-ip") == b"127.0.0.1"
            assert got.header(b"host") == b"internal:8000"
        tg.cancel_scope.cancel()


async def test_pass_host_header_false_uses_backend_host() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])}, pass_host_header=False)
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            assert (await c.request("GET", "/", host="front.example")).status == 200
            assert backend.requests[0].header(b"host") == f"127.0.0.1:{backend.port}".encode()
            assert backend.requests[0].header(b"x-forwarded-host") == b"front.example"
        tg.cancel_scope.cancel()


async def test_keep_alive_reuses_client_and_backend_connections() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            async with await HTTPClient.connect(proxy.port) as c:
                for i in range(20):
                    reply = await c.request("GET", f"/n/{i}")
                    assert reply.status == 200
                    assert reply.json()["target"] == f"/n/{i}"
            # a second client connection reuses the pooled backend connection too
            async with await HTTPClient.connect(proxy.port) as c:
                assert (await c.request("POST", "/p", body=b"hello")).status == 200
            assert backend.connections == 1
            assert proxy.plane.backend_connections_opened == 1
            assert len(backend.requests) == 21
            assert backend.requests[-1].body == b"hello"
        tg.cancel_scope.cancel()


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            raw = (
                b"".join(b"GET /slow/0.%d HTTP/1.1\r\nHost: x\r\n\r\n" % (5 - i) for i in range(5))
                + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            out = await raw_exchange(proxy.port, raw)
            targets = [
                chunk.split(b'"target": "', 1)[1].split(b'"', 1)[0]
                for chunk in out.split(b"HTTP/1.1 200")[1:]
            ]
            assert targets == [b"/slow/0.%d" % (5 - i) for i in range(5)] + [b"/last"]
        tg.cancel_scope.cancel()


async def test_chunked_request_and_response() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            raw = (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            )
            out = await raw_exchange(proxy.port, raw)
            head, _, body = out.partition(b"\r\n\r\n")
            assert status_of(out) == 200
            assert b"transfer-encoding: chunked" in head.lower()
            # de-chunk
            data = b""
            while True:
                size_line, _, body = body.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    break
                data += body[:size]
                body = body[size + 2 :]
            assert data == b"hello world"
            assert backend.requests[0].header(b"transfer-encoding") == b"chunked"
            async with await HTTPClient.connect(proxy.port) as c:
                reply = await c.request("GET", "/chunked/100000")
                assert reply.status == 200 and reply.body == b"y" * 100000
        tg.cancel_scope.cancel()


async def test_head_and_no_body_statuses() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            reply = await c.request("HEAD", "/bytes/1000")
            assert reply.status == 200 and reply.body == b""
            assert reply.header(b"content-length") == b"1000"
            assert (await c.request("GET", "/status/204")).status == 204
            assert (await c.request("GET", "/status/304")).status == 304
            assert (await c.request("GET", "/bytes/10")).body == b"x" * 10
            assert backend.connections == 1
        tg.cancel_scope.cancel()


async def test_expect_100_continue() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                await s.send(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                    b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
                )
                # h11 backends answer 100 when the body is awaited; the proxy relays it
                got = b""
                with anyio.fail_after(5):
                    while b"\r\n\r\n" not in got:
                        got += await s.receive()
                assert got.startswith(b"HTTP/1.1 100"), got
                await s.send(b"hello")
                with anyio.fail_after(5):
                    while True:
                        try:
                            got += await s.receive()
                        except anyio.EndOfStream:
                            break
                assert b"HTTP/1.1 200" in got and b'"body_size": 5' in got
            assert backend.requests[0].header(b"expect") == b"100-continue"
        tg.cancel_scope.cancel()


async def test_round_robin_over_servers() -> None:
    async with anyio.create_task_group() as tg:
        b1, b2 = HTTPBackend(name="one"), HTTPBackend(name="two")
        await tg.start(b1.serve)
        await tg.start(b2.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [b1.url, b2.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            names = [(await c.request("GET", "/")).json()["backend"] for _ in range(4)]
            assert sorted(names) == ["one", "one", "two", "two"]
        tg.cancel_scope.cancel()


async def test_http10_client_gets_close_delimited_body() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            out = await raw_exchange(proxy.port, b"GET /chunked/3000 HTTP/1.0\r\n\r\n")
            head, _, body = out.partition(b"\r\n\r\n")
            assert status_of(out) == 200
            assert b"chunked" not in head.lower()
            assert body == b"y" * 3000
            # no Host from an HTTP/1.0 client: the backend gets the server's host:port
            assert backend.requests[0].header(b"host") == f"127.0.0.1:{backend.port}".encode()
        tg.cancel_scope.cancel()


async def test_close_delimited_backend_response_is_reframed() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            reply = await c.request("GET", "/http10")
            assert reply.status == 200 and reply.body == b"old" * 1000
            assert reply.header(b"transfer-encoding") == b"chunked"
            assert reply.header(b"x-old") == b"yes"
            assert (await c.request("GET", "/next")).status == 200  # client stays connected
        tg.cancel_scope.cancel()


async def test_settings_reject_bad_values() -> None:
    from eventproxy_dataplane import SettingsError

    with pytest.raises(SettingsError, match="connect_timeout"):
        ProxySettings(connect_timeout=0)
    with pytest.raises(SettingsError, match="max_header_count must be an integer"):
        ProxySettings(max_header_count=1.5)  # type: ignore[arg-type]
    with pytest.raises(SettingsError, match="error_target"):
        ProxySettings(error_target="ftp://x")
    with pytest.raises(SettingsError, match="io_edge must be 'auto' or 'anyio'"):
        ProxySettings(io_edge="gevent")
    with pytest.raises(SettingsError, match=r"not an IP network.*'10\.0\.0\.0/33'"):
        ProxySettings(forwarded_trusted_ips=("10.0.0.0/33",))
    with pytest.raises(SettingsError, match="must be a tuple"):
        ProxySettings(forwarded_trusted_ips="10.0.0.0/8")  # type: ignore[arg-type]
    trusting = ProxySettings(forwarded_trusted_ips=("10.0.0.0/8", "::1"))
    assert trusting.trusts(b"10.1.2.3") and trusting.trusts(b"::1")
    assert not trusting.trusts(b"11.0.0.1") and not trusting.trusts(None)
