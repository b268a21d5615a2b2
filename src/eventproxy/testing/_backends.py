"""Loopback echo backends for the conformance suite (asyncio, h11, wsproto).

An :class:`EchoBackend` listens on ``127.0.0.1`` with a port the kernel picks. Plain HTTP
requests get a JSON answer describing what arrived (backend name, method, raw request target,
headers in order and spelling); a WebSocket upgrade is accepted and every text or binary message
is echoed back. Everything that arrives is also recorded on the backend, so a test can prove that
a request was, or was never, forwarded to it.

asyncio on purpose: JupyterHub's ``Proxy`` API runs on asyncio, and so does this suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field

import h11
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws
from wsproto.connection import ConnectionState

__all__ = ["EchoBackend", "Seen"]

LOOPBACK = "127.0.0.1"
_READ = 65536
_MAX_HEAD = 65536


@dataclass(frozen=True, slots=True)
class Seen:
    """One request (or WebSocket handshake) as a backend received it."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    websocket: bool = False

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


@dataclass(eq=False)
class EchoBackend:
    """An HTTP + WebSocket echo server on a free loopback port; see the module docstring."""

    name: str
    port: int = 0
    seen: list[Seen] = field(default_factory=list)
    messages: list[str | bytes] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: what a route's target is."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def targets(self) -> list[str]:
        """The request targets received so far, in order."""
        return [s.target for s in self.seen]

    async def start(self) -> EchoBackend:
        self._server = await asyncio.start_server(self._connection, LOOPBACK, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await self._server.wait_closed()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(_READ)
                if not chunk or len(head) > _MAX_HEAD:
                    return
                head += chunk
            if _wants_websocket(head):
                await self._websocket(head, reader, writer)
            else:
                await self._http(head, reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _http(
        self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(data)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await reader.read(_READ)
                conn.receive_data(chunk)
                if not chunk and conn.their_state is h11.IDLE:
                    return
                continue
            if isinstance(event, h11.Request):
                seen = Seen(
                    method=event.method.decode("ascii"),
                    target=event.target.decode("latin-1"),
                    headers=tuple(
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in event.headers.raw_items()
                    ),
                )
                self.seen.append(seen)
                continue
            if isinstance(event, h11.Data):
                continue
            if isinstance(event, h11.EndOfMessage):
                last = self.seen[-1]
                body = json.dumps(
                    {
                        "backend": self.name,
                        "method": last.method,
                        "target": last.target,
                        "headers": [list(h) for h in last.headers],
                    }
                ).encode()
                out = conn.send(
                    h11.Response(
                        status_code=200,
                        headers=[
                            ("content-type", "application/json"),
                            ("content-length", str(len(body))),
                        ],
                    )
                )
                out = (out or b"") + (conn.send(h11.Data(data=body)) or b"")
                out += conn.send(h11.EndOfMessage()) or b""
                writer.write(out)
                await writer.drain()
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                    continue
                return
            return  # ConnectionClosed, PAUSED or anything unexpected: end this connection

    async def _websocket(
        self, data: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        wsc = WSConnection(ConnectionType.SERVER)
        wsc.receive_data(data)
        while True:
            out = b""
            done = False
            for event in wsc.events():
                if isinstance(event, ws.Request):
                    self.seen.append(
                        Seen(
                            method="GET",
                            target=event.target,
                            headers=(
                                ("host", event.host),
                                *(
                                    (bytes(k).decode("latin-1"), bytes(v).decode("latin-1"))
                                    for k, v in event.extra_headers
                                ),
                            ),
                            websocket=True,
                        )
                    )
                    out += wsc.send(ws.AcceptConnection())
                elif isinstance(event, ws.TextMessage):
                    self.messages.append(event.data)
                    out += wsc.send(
                        ws.TextMessage(data=event.data, message_finished=event.message_finished)
                    )
                elif isinstance(event, ws.BytesMessage):
                    self.messages.append(bytes(event.data))
                    out += wsc.send(
                        ws.BytesMessage(
                            data=bytes(event.data), message_finished=event.message_finished
                        )
                    )
                elif isinstance(event, ws.Ping):
                    out += wsc.send(event.response())
                elif isinstance(event, ws.CloseConnection):
                    if wsc.state is ConnectionState.REMOTE_CLOSING:
                        out += wsc.send(event.response())
                    done = True
            if out:
                writer.write(out)
                await writer.drain()
            if done:
                return
            chunk = await reader.read(_READ)
            wsc.receive_data(chunk or None)
            if not chunk:
                return


def _wants_websocket(head: bytes) -> bool:
    """True when the request head asks for a WebSocket upgrade."""
    lines = head.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]
    for line in lines:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"upgrade" and b"websocket" in value.lower():
            return True
    return False
