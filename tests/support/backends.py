"""Loopback test backends (anyio + h11 / wsproto), reusable by any test that needs an upstream.

Each backend runs inside the test's own event loop (asyncio or trio) on 127.0.0.1 with a port
the kernel picks, started with ``port = await task_group.start(backend.serve)``. They record
what reached them, so a test can assert that a request was (or was never) forwarded.

``HTTPBackend`` answers by path:

    /echo             stream the request body back as it arrives (chunked response)
    /bytes/N          N bytes of ``b"x"`` with Content-Length, sent in 64 KiB pieces
    /chunked/N        N bytes, chunked (no Content-Length)
    /slow/SECONDS     wait, then answer like the default
    /drip/N/SECONDS   N small chunks, one every SECONDS
    /reset            send a head announcing 1 MB and 1000 bytes of it, then close abruptly
    /close            close the connection without answering
    /http10           an HTTP/1.0 answer without Content-Length, ended by closing
    /then-close       answer 200 (keep-alive), then close the connection (a stale pooled one)
    /status/CODE      an empty response with that status
    /upgrade-refused  answer a WebSocket upgrade with 403
    anything else     200, JSON describing the request (method, target, headers, body size)

``WebSocketEchoBackend`` accepts a WebSocket handshake (wsproto) and echoes text and binary
messages; the text message ``close:CODE`` makes it close with that code.
``ClosingBackend`` accepts connections and closes them at once (a backend that resets).
``RawBackend`` records the exact bytes each connection delivered and answers every request it
can frame (h11, strict) with scripted raw bytes, then closes: for checking byte for byte what a
proxy forwards, and for backends that answer with malformed framing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import h11
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.connection import ConnectionState

if TYPE_CHECKING:
    from eventproxy_dataplane import DataPlane, ProxySettings, RoutingTable

LOOPBACK = "127.0.0.1"
_CHUNK = 65536
_EMPTY = [(b"content-length", b"0")]


@dataclass
class Received:
    """One request as a backend saw it."""

    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body_size: int = 0
    body: bytes = b""  # first 64 KiB only (RawBackend: all of it)
    connection: int = 0
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)  # RawBackend only

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def header_all(self, name: bytes) -> list[bytes]:
        return [v for k, v in self.headers if k == name.lower()]


@dataclass
class _Base:
    name: str = "backend"
    port: int = 0
    connections: int = 0
    open_connections: int = 0
    raw_bytes: int = 0

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        listener = await anyio.create_tcp_listener(local_host=LOOPBACK, local_port=self.port)
        self.port = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        async with listener:
            task_status.started(self.port)
            await listener.serve(self._accepted)

    async def _accepted(self, stream: anyio.abc.ByteStream) -> None:
        self.connections += 1
        self.open_connections += 1
        try:
            await self.connection(stream, self.connections)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError, h11.ProtocolError):
            pass
        finally:
            self.open_connections -= 1
            await anyio.aclose_forcefully(stream)

    async def connection(self, stream: anyio.abc.ByteStream, number: int) -> None:
        raise NotImplementedError


@dataclass
class HTTPBackend(_Base):
    """An HTTP/1.1 backend with scripted behaviours (see the module docstring)."""

    requests: list[Received] = field(default_factory=list)
    sent_bytes: int = 0  # body bytes sent by /bytes/N so far

    async def connection(self, stream: anyio.abc.ByteStream, number: int) -> None:
        conn = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                if conn.they_are_waiting_for_100_continue:
                    await stream.send(
                        conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
                    )
                try:
                    data = await stream.receive(_CHUNK)
                except anyio.EndOfStream:
                    data = b""
                self.raw_bytes += len(data)
                conn.receive_data(data)

        while True:
            event = await next_event()
            if type(event) is not h11.Request:
                return
            got = Received(event.method, event.target, list(event.headers), connection=number)
            self.requests.append(got)
            path = event.target.split(b"?", 1)[0].decode()
            parts = path.strip("/").split("/")
            if parts[0] == "echo":
                await self._echo(conn, stream, got, next_event)
            else:
                while True:
                    body_event = await next_event()
                    if type(body_event) is h11.Data:
                        got.body_size += len(body_event.data)
                        if len(got.body) < _CHUNK:
                            got.body += body_event.data[: _CHUNK - len(got.body)]
                    else:
                        break
                if not await self._answer(conn, stream, got, parts):
                    return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _echo(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, got: Received, next_event: Any
    ) -> None:
        await stream.send(conn.send(h11.Response(status_code=200, headers=[])) or b"")
        while True:
            event = await next_event()
            if type(event) is h11.Data:
                got.body_size += len(event.data)
                await stream.send(conn.send(h11.Data(data=event.data)) or b"")
            else:
                break
        await stream.send(conn.send(h11.EndOfMessage()) or b"")

    async def _answer(
        self, conn: h11.Connection, stream: anyio.abc.ByteStream, got: Received, parts: list[str]
    ) -> bool:
        kind = parts[0]
        if kind == "bytes":
            size = int(parts[1])
            head = h11.Response(status_code=200, headers=[(b"content-length", b"%d" % size)])
            await stream.send(conn.send(head) or b"")
            if got.method == b"HEAD":
                size = 0
            piece = b"x" * _CHUNK
            left = size
            while left > 0:
                n = min(left, _CHUNK)
                await stream.send(conn.send(h11.Data(data=piece[:n])) or b"")
                left -= n
                self.sent_bytes += n
            await stream.send(conn.send(h11.EndOfMessage()) or b"")
            return True
        if kind == "chunked":
            size = int(parts[1])
            await stream.send(conn.send(h11.Response(status_code=200, headers=[])) or b"")
            left = size
            while left > 0:
                n = min(left, 1000)
                await stream.send(conn.send(h11.Data(data=b"y" * n)) or b"")
                left -= n
            await stream.send(conn.send(h11.EndOfMessage()) or b"")
            return True
        if kind == "drip":
            count, delay = int(parts[1]), float(parts[2])
            await stream.send(conn.send(h11.Response(status_code=200, headers=[])) or b"")
            for i in range(count):
                await anyio.sleep(delay)
                await stream.send(conn.send(h11.Data(data=b"drip %d\n" % i)) or b"")
            await stream.send(conn.send(h11.EndOfMessage()) or b"")
            return True
        if kind == "slow":
            await anyio.sleep(float(parts[1]))
        if kind == "reset":
            head = h11.Response(status_code=200, headers=[(b"content-length", b"1000000")])
            await stream.send((conn.send(head) or b"") + b"z" * 1000)
            return False
        if kind == "close":
            return False
        if kind == "http10":  # an HTTP/1.0 answer delimited by closing the connection
            await stream.send(b"HTTP/1.0 200 OK\r\nX-Old: yes\r\n\r\n" + b"old" * 1000)
            return False
        if kind == "then-close":  # answer as if keeping the connection, then close it
            await stream.send(
                (conn.send(h11.Response(status_code=200, headers=_EMPTY)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            return False
        if kind == "status":
            code = int(parts[1])
            await stream.send(
                (
                    conn.send(h11.Response(status_code=code, headers=[(b"content-length", b"0")]))
                    or b""
                )
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            return True
        if kind == "upgrade-refused":
            body = b"no websockets here\n"
            head = h11.Response(status_code=403, headers=[(b"content-length", b"%d" % len(body))])
            await stream.send(
                (conn.send(head) or b"")
                + (conn.send(h11.Data(data=body)) or b"")
                + (conn.send(h11.EndOfMessage()) or b"")
            )
            return True
        doc = {
            "backend": self.name,
            "method": got.method.decode(),
            "target": got.target.decode("latin-1"),
            "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in got.headers],
            "body_size": got.body_size,
            "connection": got.connection,
        }
        body = json.dumps(doc).encode()
        head = h11.Response(
            status_code=200,
            headers=[
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)),
            ],
        )
        await stream.send(
            (conn.send(head) or b"")
            + (conn.send(h11.Data(data=body)) or b"")
            + (conn.send(h11.EndOfMessage()) or b"")
        )
        return True


@dataclass
class ClosingBackend(_Base):
    """Accepts a connection, reads a little, and closes it without an answer."""

    async def connection(self, stream: anyio.abc.ByteStream, number: int) -> None:
        with anyio.move_on_after(1):
            await stream.receive()


OK_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"


@dataclass
class RawBackend(_Base):
    """Records every byte received, per connection; answers one request per connection.

    ``received[i]`` holds the bytes of connection ``i`` (in arrival order), ``requests`` what h11
    framed from them (a stream h11 refuses is recorded in ``errors`` and closed). Once a request is
    complete, ``reply`` (raw bytes, sent as is) goes back and the connection is closed.
    ``head_seen`` is set when the first request head has fully arrived (a readiness signal for
    tests that send a body in a second write).
    """

    reply: bytes = OK_REPLY
    received: list[bytearray] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    head_seen: anyio.Event = field(default_factory=anyio.Event)

    @property
    def all_bytes(self) -> bytes:
        return b"".join(self.received)

    _changed: anyio.Event = field(default_factory=anyio.Event)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, predicate: Callable[[], bool], limit: float = 5.0) -> None:
        """Wait (at most ``limit`` seconds) until ``predicate()`` holds; it is re-checked
        whenever bytes arrive or a connection ends."""
        with anyio.fail_after(limit):
            while not predicate():
                await self._changed.wait()

    async def wait_closed(self, limit: float = 5.0) -> None:
        """Wait until every connection to this backend has ended (its bytes are all in)."""
        await self.wait_for(lambda: self.open_connections == 0, limit)

    async def _accepted(self, stream: anyio.abc.ByteStream) -> None:
        try:
            await super()._accepted(stream)
        finally:
            self._notify()

    async def connection(self, stream: anyio.abc.ByteStream, number: int) -> None:
        buf = bytearray()
        self.received.append(buf)
        # large heads are recorded, not refused: the proxy under test enforces the limits
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=8 * 1024 * 1024)
        got: Received | None = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self.errors.append(str(exc))
                return
            if event is h11.NEED_DATA:
                data = await _receive_or_empty(stream, buf)
                self._notify()
                conn.receive_data(data)
                continue
            if type(event) is h11.Request:
                got = Received(event.method, event.target, list(event.headers), connection=number)
                self.requests.append(got)
                self.head_seen.set()
            elif type(event) is h11.Data and got is not None:
                got.body_size += len(event.data)
                got.body += event.data
            elif type(event) is h11.EndOfMessage and got is not None:
                got.trailers = list(event.headers)
                await stream.send(self.reply)
                return
            else:
                return


async def _receive_or_empty(stream: anyio.abc.ByteStream, buf: bytearray) -> bytes:
    try:
        data = await stream.receive(_CHUNK)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        return b""
    buf += data
    return data


@dataclass
class WebSocketEchoBackend(_Base):
    """A WebSocket echo server (wsproto); ``close:CODE`` makes it close with CODE."""

    messages: list[str | bytes] = field(default_factory=list)
    handshake_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    async def connection(self, stream: anyio.abc.ByteStream, number: int) -> None:
        wsc = WSConnection(ConnectionType.SERVER)
        while True:
            try:
                data = await stream.receive(_CHUNK)
            except anyio.EndOfStream:
                return
            wsc.receive_data(data)
            out = b""
            closing = False
            for event in wsc.events():
                if isinstance(event, ws.Request):
                    self.handshake_headers = [(bytes(k), bytes(v)) for k, v in event.extra_headers]
                    out += wsc.send(ws.AcceptConnection())
                elif isinstance(event, ws.TextMessage):
                    self.messages.append(event.data)
                    if event.data.startswith("close:"):
                        out += wsc.send(ws.CloseConnection(code=int(event.data[6:]), reason="bye"))
                    else:
                        out += wsc.send(ws.Message(data=event.data))
                elif isinstance(event, ws.BytesMessage):
                    self.messages.append(bytes(event.data))
                    out += wsc.send(ws.Message(data=bytes(event.data)))
                elif isinstance(event, ws.Ping):
                    out += wsc.send(event.response())
                elif isinstance(event, ws.CloseConnection):
                    if wsc.state is ConnectionState.REMOTE_CLOSING:
                        out += wsc.send(event.response())
                    closing = True
            if out:
                await stream.send(out)
            if closing:
                return


# -- clients ------------------------------------------------------------------------------------


@dataclass
class Reply:
    """A response read by :class:`HTTPClient`."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class HTTPClient:
    """A keep-alive HTTP/1.1 client over one connection (h11), plus raw-bytes escape hatches."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def connect(cls, port: int) -> HTTPClient:
        return cls(await anyio.connect_tcp(LOOPBACK, port))

    async def aclose(self) -> None:
        await anyio.aclose_forcefully(self.stream)

    async def __aenter__(self) -> HTTPClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        host: str = "example.test",
    ) -> Reply:
        await self.send_request(method, target, headers=headers, body=body, host=host)
        return await self.read_reply()

    async def send_request(
        self,
        method: str,
        target: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        host: str = "example.test",
    ) -> None:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("host", host), *(headers or [])]
        if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs)) or b""
        if body:
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        await self.stream.send(out)

    async def _event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(_CHUNK)
            except anyio.EndOfStream:
                data = b""
            self.conn.receive_data(data)

    async def read_reply(self) -> Reply:
        event = await self._event()
        while type(event) is h11.InformationalResponse:
            event = await self._event()
        if type(event) is not h11.Response:
            raise AssertionError(f"expected a response, got {event!r}")
        body = bytearray()
        while True:
            part = await self._event()
            if type(part) is h11.Data:
                body += part.data
            elif type(part) is h11.EndOfMessage:
                break
            else:
                raise AssertionError(f"unexpected {part!r}")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return Reply(event.status_code, list(event.headers), bytes(body))


async def raw_exchange(port: int, data: bytes, *, limit: float = 10.0) -> bytes:
    """Send ``data`` on a new connection; return everything read until the proxy closes it.

    Fails (``TimeoutError``) if the connection is still open after ``limit`` seconds.
    """
    async with await anyio.connect_tcp(LOOPBACK, port) as stream:
        await stream.send(data)
        out = bytearray()
        with anyio.fail_after(limit):
            while True:
                try:
                    chunk = await stream.receive(_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    return bytes(out)
                out += chunk


def status_of(raw: bytes) -> int:
    """The status code of the first response in ``raw``."""
    line = raw.split(b"\r\n", 1)[0]
    if not line.startswith(b"HTTP/1."):
        raise AssertionError(f"not an HTTP response: {raw[:200]!r}")
    return int(line.split()[1])


# -- the data plane under test ------------------------------------------------------------------


def make_table(
    routes: Mapping[str, tuple[str, Sequence[str]]], *, pass_host_header: bool = True
) -> RoutingTable:
    """A routing table from ``{router: (rule, [server urls])}``; one service per router."""
    from eventproxy_dataplane import (
        DynamicConfig,
        RouterSpec,
        RoutingTable,
        ServerSpec,
        ServiceSpec,
    )

    routers = {}
    services = {}
    for name, (rule, urls) in routes.items():
        routers[name] = RouterSpec(name=name, rule=rule, service=name)
        services[name] = ServiceSpec(
            name=name,
            servers=tuple(ServerSpec(u) for u in urls),
            pass_host_header=pass_host_header,
        )
    table, problems = RoutingTable.build(DynamicConfig(routers=routers, services=services))
    assert not problems, problems
    return table


# The I/O edge running_proxy() uses; the ``io_edge`` fixture of tests/dataplane sets it.
PROXY_IO_EDGE = ["auto"]
# The parsers the data plane has: h11 always; httptools once its module is in the tree (then a
# missing httptools package fails the tests instead of skipping them).
PARSERS = [
    "h11",
    *(
        ["httptools"]
        if importlib.util.find_spec("eventproxy_dataplane._parse_httptools") is not None
        else []
    ),
]
# The HTTP parser running_proxy() uses ("h11" or "httptools"); set by the same fixture.
PROXY_PARSER = ["h11"]


@dataclass
class RunningProxy:
    plane: DataPlane
    port: int


@asynccontextmanager
async def running_proxy(
    table: RoutingTable | None = None, settings: ProxySettings | None = None
) -> AsyncIterator[RunningProxy]:
    """A DataPlane serving on a free 127.0.0.1 port; cancelled (and closed) on exit."""
    from eventproxy_dataplane import DataPlane, ProxySettings

    settings = dataclasses.replace(
        settings or ProxySettings(), io_edge=PROXY_IO_EDGE[0], parser=PROXY_PARSER[0]
    )
    plane = DataPlane(table, settings)
    async with anyio.create_task_group() as tg:
        port = await tg.start(plane.serve_tcp, LOOPBACK, 0)
        try:
            yield RunningProxy(plane, port)
        finally:
            tg.cancel_scope.cancel()
