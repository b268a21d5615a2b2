"""WebSocket upgrades through the proxy (wsproto client and server), and per-route activity."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

from support.backends import (
    HTTPBackend,
    HTTPClient,
    WebSocketEchoBackend,
    make_table,
    running_proxy,
)

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


class WSClient:
    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.wsc = WSConnection(ConnectionType.CLIENT)
        self.pending: list[Any] = []

    async def event(self) -> Any:
        while not self.pending:
            with anyio.fail_after(5):
                data = await self.stream.receive()
            self.wsc.receive_data(data)
            self.pending.extend(self.wsc.events())
        return self.pending.pop(0)

    async def send(self, event: Any) -> None:
        await self.stream.send(self.wsc.send(event))


async def _handshake(port: int, target: str) -> WSClient:
    client = WSClient(await anyio.connect_tcp("127.0.0.1", port))
    await client.send(ws.Request(host="hub.example", target=target))
    return client


async def test_websocket_echo_text_binary_and_close_codes() -> None:
    async with anyio.create_task_group() as tg:
        backend = WebSocketEchoBackend()
        await tg.start(backend.serve)
        table = make_table({"user-a": ("PathPrefix(`/user/a/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            before = datetime.now(UTC)
            client = await _handshake(proxy.port, "/user/a/api/kernels/1/channels")
            assert isinstance(await client.event(), ws.AcceptConnection)
            await client.send(ws.TextMessage(data="héllo"))
            await client.send(ws.BytesMessage(data=b"\x00\x01\xff" * 1000))
            text = await client.event()
            assert isinstance(text, ws.TextMessage) and text.data == "héllo"
            data = b""
            while len(data) < 3000:
                event = await client.event()
                assert isinstance(event, ws.BytesMessage)
                data += bytes(event.data)
            assert data == b"\x00\x01\xff" * 1000
            # the backend closes with an application code
            await client.send(ws.TextMessage(data="close:4001"))
            close = await client.event()
            assert isinstance(close, ws.CloseConnection) and close.code == 4001
            await client.send(close.response())
            with anyio.fail_after(5):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    while True:
                        await client.stream.receive()
            await client.stream.aclose()

            # the client closes with 1000
            client = await _handshake(proxy.port, "/user/a/ws")
            assert isinstance(await client.event(), ws.AcceptConnection)
            await client.send(ws.CloseConnection(code=1000, reason="done"))
            close = await client.event()
            assert isinstance(close, ws.CloseConnection) and close.code == 1000
            await client.stream.aclose()

            seen = proxy.plane.activity()
            assert seen["user-a"] >= before
            assert (b"x-forwarded-for", b"127.0.0.1") in backend.handshake_headers
        tg.cancel_scope.cancel()


async def test_websocket_frames_sent_together_arrive_separately() -> None:
    async with anyio.create_task_group() as tg:
        backend = WebSocketEchoBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            client = WSClient(await anyio.connect_tcp("127.0.0.1", proxy.port))
            handshake = client.wsc.send(ws.Request(host="x", target="/ws"))
            await client.stream.send(handshake)
            assert isinstance(await client.event(), ws.AcceptConnection)
            # now send two frames at once and expect both back
            await client.stream.send(
                client.wsc.send(ws.TextMessage(data="one"))
                + client.wsc.send(ws.TextMessage(data="two"))
            )
            assert (await client.event()).data == "one"
            assert (await client.event()).data == "two"
            await client.stream.aclose()
        tg.cancel_scope.cancel()


UPGRADE = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Version", "13"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
]


async def closed_by_proxy(client: HTTPClient) -> bool:
    """True once the proxy has closed the client connection (EOF), False if it sends more."""
    with anyio.fail_after(5):
        try:
            return await client.stream.receive() == b""
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            return True


async def test_refused_upgrade_is_relayed_then_the_connection_is_closed() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            for path, status in (("/upgrade-refused", 403), ("/plain", 200)):
                async with await HTTPClient.connect(proxy.port) as c:
                    reply = await c.request("GET", path, headers=UPGRADE)
                    assert reply.status == status
                    assert reply.header(b"connection") == b"close"
                    assert await closed_by_proxy(c)
            assert reply.json()["target"] == "/plain"  # a backend answering 200, relayed
            assert backend.requests[0].header(b"upgrade") == b"websocket"
            # without Upgrade the same answers keep the connection alive
            async with await HTTPClient.connect(proxy.port) as c:
                assert (await c.request("GET", "/upgrade-refused")).status == 403
                assert (await c.request("GET", "/after")).status == 200
        tg.cancel_scope.cancel()


async def test_an_upgrade_with_no_route_or_a_stopped_server_closes_the_connection() -> None:
    stopped = "http://127.0.0.1:1"  # nothing listens there: connection refused
    table = make_table({"down": ("PathPrefix(`/down/`)", [stopped])})
    async with running_proxy(table) as proxy:
        for path, status in (("/nowhere/", 404), ("/down/api/kernels", 502)):
            async with await HTTPClient.connect(proxy.port) as c:
                reply = await c.request("GET", path, headers=UPGRADE)
                assert reply.status == status
                assert reply.header(b"connection") == b"close"
                assert await closed_by_proxy(c)
            async with await HTTPClient.connect(proxy.port) as c:  # no upgrade: kept alive
                assert (await c.request("GET", path)).status == status
                assert (await c.request("GET", path)).status == status


async def test_activity_is_recorded_per_router_at_a_bounded_rate() -> None:
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table(
            {"a": ("PathPrefix(`/a/`)", [backend.url]), "b": ("PathPrefix(`/b/`)", [backend.url])}
        )
        async with running_proxy(table) as proxy, await HTTPClient.connect(proxy.port) as c:
            assert proxy.plane.activity() == {}
            await c.request("GET", "/a/1")
            first = proxy.plane.activity()["a"]
            for _ in range(5):
                await c.request("GET", "/a/1")
            assert proxy.plane.activity()["a"] == first  # at most once per second
            assert "b" not in proxy.plane.activity()
            await c.request("GET", "/b/1")
            assert set(proxy.plane.activity()) == {"a", "b"}
            # a swap to a table without "a" forgets its activity
            proxy.plane.set_table(make_table({"b": ("PathPrefix(`/b/`)", [backend.url])}))
            assert set(proxy.plane.activity()) == {"b"}
        tg.cancel_scope.cancel()


def _masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


async def test_frame_sent_with_the_handshake_is_handed_over() -> None:
    """Bytes h11 read past the request head (``trailing_data``) reach the backend."""
    async with anyio.create_task_group() as tg:
        backend = WebSocketEchoBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            client = WSClient(await anyio.connect_tcp("127.0.0.1", proxy.port))
            handshake = client.wsc.send(ws.Request(host="x", target="/ws"))
            await client.stream.send(handshake + _masked_text_frame("early"))
            assert isinstance(await client.event(), ws.AcceptConnection)
            assert (await client.event()).data == "early"
            await client.stream.aclose()
        tg.cancel_scope.cancel()
