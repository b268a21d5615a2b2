"""Backend failures and error pages: 404, 502, 503, 504, error_target, resets, slow peers."""

from __future__ import annotations

import json

import anyio
import pytest

from eventproxy_dataplane import (
    DataPlane,
    DynamicConfig,
    ProxySettings,
    RouterSpec,
    RoutingTable,
    ServiceSpec,
)
from support import free_port
from support.backends import (
    ClosingBackend,
    HTTPBackend,
    HTTPClient,
    make_table,
    raw_exchange,
    running_proxy,
    status_of,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


async def test_404_without_route_keeps_the_connection() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/user/a/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            reply = await c.request("GET", "/user/b/")
            assert reply.status == 404
            assert reply.body == b"404 page not found\n"
            reply = await c.request("POST", "/nope", body=b"some body")
            assert reply.status == 404
            assert (await c.request("GET", "/user/a/")).status == 200
        assert len(backend.requests) == 1
        tg.cancel_scope.cancel()


async def test_empty_plane_answers_404() -> None:
    async with running_proxy() as proxy:
        out = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(out) == 404


async def test_502_when_backend_refuses_or_closes() -> None:
    async with anyio.create_task_group() as tg:
        closing = ClosingBackend()
        await tg.start(closing.serve)
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table(
            {
                "refused": ("PathPrefix(`/refused/`)", [f"http://127.0.0.1:{free_port()}"]),
                "closing": ("PathPrefix(`/closing/`)", [closing.url]),
                "ok": ("PathPrefix(`/`)", [backend.url]),
            }
        )
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            assert (await c.request("GET", "/refused/")).status == 502
            assert (await c.request("GET", "/closing/")).status == 502
            assert (await c.request("GET", "/close")).status == 502  # backend closes, no answer
            assert (await c.request("GET", "/ok")).status == 200  # same client connection
            metrics = proxy.plane.metrics_text()
            assert (
                'eventproxy_dataplane_backend_errors_total{router="refused",kind="connect"} 1'
                in (metrics)
            )
            assert 'requests_total{router="closing",code="5xx"} 1' in metrics
        tg.cancel_scope.cancel()


async def test_backend_closing_a_pooled_connection_is_not_an_error() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            for _ in range(3):
                assert (await c.request("GET", "/then-close")).status == 200
                with anyio.fail_after(5):
                    while backend.open_connections:  # noqa: ASYNC110 - polls a counter
                        await anyio.sleep(0.01)
                # the pooled connection is dead now: retried (GET) or skipped, never a 502
                assert (await c.request("GET", "/after")).status == 200
            assert backend.connections == 4  # each /after opened a new one, then reused
        tg.cancel_scope.cancel()


async def test_503_when_service_has_no_servers() -> None:
    config = DynamicConfig(
        routers={"r": RouterSpec("r", "PathPrefix(`/`)", "s")},
        services={"s": ServiceSpec("s", ())},
    )
    table, _ = RoutingTable.build(config)
    async with running_proxy(table) as proxy:
        out = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(out) == 503


async def test_504_when_backend_is_too_slow() -> None:
    settings = ProxySettings(backend_response_timeout=0.3)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            async with await HTTPClient.connect(proxy.port) as c:
                started = anyio.current_time()
                reply = await c.request("GET", "/slow/3")
                assert reply.status == 504
                assert reply.header(b"connection") == b"close"
                assert anyio.current_time() - started < 2
            assert 'kind="timeout"' in proxy.plane.metrics_text()
            async with await HTTPClient.connect(proxy.port) as c:
                # a slow *body* is not a timeout: only the response head is bounded
                reply = await c.request("GET", "/drip/3/0.2")
                assert reply.status == 200 and reply.body.count(b"drip") == 3
        tg.cancel_scope.cancel()


async def test_error_target_serves_the_hub_error_page_with_the_original_status() -> None:
    async with anyio.create_task_group() as tg:
        hub = HTTPBackend(name="hub")
        await tg.start(hub.serve)
        settings = ProxySettings(error_target=f"{hub.url}/hub/error")
        table = make_table(
            {"dead": ("PathPrefix(`/user/dead/`)", [f"http://127.0.0.1:{free_port()}"])}
        )
        async with (
            running_proxy(table, settings) as proxy,
            await HTTPClient.connect(proxy.port) as c,
        ):
            reply = await c.request("GET", "/nothing/here?a=b&c=d e".replace(" ", "%20"))
            assert reply.status == 404
            page = json.loads(reply.body)
            assert page["backend"] == "hub"
            assert page["target"] == "/hub/error/404?url=%2Fnothing%2Fhere%3Fa%3Db%26c%3Dd%2520e"
            assert reply.header(b"content-type") == b"application/json"
            reply = await c.request("GET", "/user/dead/lab")
            assert reply.status == 502
            assert json.loads(reply.body)["target"] == "/hub/error/502?url=%2Fuser%2Fdead%2Flab"
        tg.cancel_scope.cancel()


async def test_error_target_down_falls_back_to_plain_error() -> None:
    settings = ProxySettings(error_target=f"http://127.0.0.1:{free_port()}/hub/error")
    async with running_proxy(None, settings) as proxy:
        out = await raw_exchange(
            proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        assert status_of(out) == 404 and out.endswith(b"404 page not found\n")


async def test_backend_reset_mid_response_closes_the_client_connection() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            out = await raw_exchange(proxy.port, b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n", limit=5)
            head, _, body = out.partition(b"\r\n\r\n")
            assert status_of(out) == 200
            assert b"content-length: 1000000" in head.lower()
            assert 0 < len(body) < 1000000  # truncated, and the connection was closed (no hang)
            metrics = proxy.plane.metrics_text()
            assert 'kind="reset"' in metrics
            assert 'requests_total{router="r",code="2xx"} 1' in metrics  # the head was sent
        tg.cancel_scope.cancel()


async def test_slow_client_gets_back_pressure_not_buffering() -> None:
    size = 96 * 1024 * 1024
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with (
            running_proxy(table) as proxy,
            await anyio.connect_tcp("127.0.0.1", proxy.port) as s,
        ):
            await s.send(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
            got = 0
            while got < 1024 * 1024:
                got += len(await s.receive())
            # stop reading: the backend must stall, the proxy must not buffer the rest
            previous = -1
            while previous != backend.sent_bytes:
                previous = backend.sent_bytes
                await anyio.sleep(0.3)
            assert backend.sent_bytes < size // 2
            with anyio.fail_after(20):
                while True:
                    try:
                        got += len(await s.receive(1 << 20))
                    except anyio.EndOfStream:
                        break
            assert got > size
        tg.cancel_scope.cancel()


async def test_slow_backend_is_streamed_as_it_comes() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with (
            running_proxy(table) as proxy,
            await anyio.connect_tcp("127.0.0.1", proxy.port) as s,
        ):
            await s.send(b"GET /drip/3/0.4 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            got = b""
            with anyio.fail_after(5):
                while b"drip 0" not in got:
                    got += await s.receive()
            assert b"drip 2" not in got  # the first piece arrived before the backend finished
            with anyio.fail_after(5):
                while True:
                    try:
                        got += await s.receive()
                    except anyio.EndOfStream:
                        break
            assert b"drip 2" in got
        tg.cancel_scope.cancel()


async def test_large_upload_is_streamed_to_the_backend() -> None:
    size = 32 * 1024 * 1024
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            reply = await c.request("POST", "/upload", body=b"u" * size)
            assert reply.status == 200 and reply.json()["body_size"] == size
        async with running_proxy(table) as proxy:
            # and a chunked upload of unknown length
            chunks = b"".join(b"10000\r\n" + b"v" * 0x10000 + b"\r\n" for _ in range(64))
            out = await raw_exchange(
                proxy.port,
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Connection: close\r\n\r\n" + chunks + b"0\r\n\r\n",
            )
            assert b'"body_size": %d' % (64 * 0x10000) in out
        tg.cancel_scope.cancel()


async def test_client_vanishing_mid_upload_frees_the_backend_connection() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:
                await s.send(
                    b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
                )
                await s.send(b"u" * 1_000_000)
                with anyio.fail_after(5):
                    while not backend.open_connections:  # noqa: ASYNC110 - polls a counter
                        await anyio.sleep(0.01)
            with anyio.fail_after(5):
                while backend.open_connections:  # noqa: ASYNC110 - polls a counter
                    await anyio.sleep(0.01)
            assert proxy.plane.metrics_text().count("in_flight_requests 0") == 1
            async with await HTTPClient.connect(proxy.port) as c:
                assert (await c.request("GET", "/still-fine")).status == 200
        tg.cancel_scope.cancel()


async def test_metrics_and_health_on_the_admin_listener() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        plane = DataPlane(make_table({"r": ("PathPrefix(`/`)", [backend.url])}))
        port = await tg.start(plane.serve_tcp, "127.0.0.1", 0)
        admin = await tg.start(plane.serve_admin, "127.0.0.1", 0)
        async with await HTTPClient.connect(port) as c:
            assert (await c.request("GET", "/")).status == 200
        async with await HTTPClient.connect(admin) as c:
            health = await c.request("GET", "/health")
            assert health.status == 200 and health.json()["status"] == "ok"
            assert health.json()["generation"] == 1
            metrics = await c.request("GET", "/metrics")
            assert metrics.status == 200
            text = metrics.body.decode()
            assert 'eventproxy_dataplane_requests_total{router="r",code="2xx"} 1' in text
            assert "eventproxy_dataplane_in_flight_requests 0" in text
            assert "eventproxy_dataplane_config_generation 1" in text
            assert (await c.request("GET", "/other")).status == 404
        tg.cancel_scope.cancel()


def test_backend_down_status_is_502_or_503() -> None:
    from eventproxy_dataplane import ProxySettings, SettingsError

    assert ProxySettings().backend_down_status == 502
    assert ProxySettings(backend_down_status=503).backend_down_status == 503
    with pytest.raises(SettingsError, match="502 or 503"):
        ProxySettings(backend_down_status=500)
