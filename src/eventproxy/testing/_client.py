"""A tiny HTTP/1.1 and WebSocket client for the conformance suite (asyncio, h11, wsproto).

The request target is sent exactly as given (no normalisation of ``..``, no re-escaping), and the
Host header is whatever the test says: the point is to send what a browser, or an attacker,
would send. One connection per request keeps the tests independent of keep-alive behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import h11
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws

__all__ = ["Reply", "WebSocketClient", "http_request"]

_READ = 65536
#: Seconds any one request, handshake or receive may take (callers can nest a shorter
#: ``asyncio.timeout`` around a call).
TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Reply:
    """A response as the client read it."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def backend(self) -> str | None:
        """The name of the echo backend that answered, or ``None`` (the proxy answered)."""
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        if isinstance(doc, dict) and isinstance(doc.get("backend"), str):
            return str(doc["backend"])
        return None

    @property
    def target(self) -> str | None:
        """The request target the echo backend received, or ``None``."""
        if self.backend is None:
            return None
        return str(self.json()["target"])

    def received_header(self, name: str) -> str | None:
        """A header as the echo backend received it (first value, case-insensitive)."""
        if self.backend is None:
            return None
        for key, value in self.json()["headers"]:
            if str(key).lower() == name.lower():
                return str(value)
        return None


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or parts.hostname is None or parts.port is None:
        raise ValueError(f"expected http://HOST:PORT, got {base_url!r}")
    return parts.hostname, parts.port


async def http_request(
    base_url: str,
    target: str,
    *,
    method: str = "GET",
    host: str | None = None,
    headers: Sequence[tuple[str, str]] = (),
) -> Reply:
    """Send one request for ``target`` (sent verbatim) to ``base_url``; read the whole reply.

    ``host`` defaults to the address of ``base_url``.
    """
    address, port = _address(base_url)
    async with asyncio.timeout(TIMEOUT):
        reader, writer = await asyncio.open_connection(address, port)
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method=method,
                target=target.encode("ascii"),
                headers=[
                    ("host", host if host is not None else f"{address}:{port}"),
                    *headers,
                    ("connection", "close"),
                ],
            )
            writer.write((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
            await writer.drain()
            status = 0
            got_headers: tuple[tuple[str, str], ...] = ()
            body = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(_READ))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    got_headers = tuple(
                        (k.decode("latin-1"), v.decode("latin-1"))
                        for k, v in event.headers.raw_items()
                    )
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return Reply(status, got_headers, bytes(body))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class WebSocketClient:
    """A WebSocket client connection through the proxy (use ``async with``)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._pending: list[ws.Event] = []
        self._text: list[str] = []
        self._bytes: list[bytes] = []

    @classmethod
    async def connect(
        cls,
        base_url: str,
        target: str,
        *,
        host: str | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> WebSocketClient:
        """Open a connection and complete the upgrade; raises ``ConnectionError`` if refused."""
        address, port = _address(base_url)
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(address, port)
            client = cls(reader, writer)
            try:
                await client._handshake(host or f"{address}:{port}", target, headers)
            except BaseException:
                await client.aclose()
                raise
        return client

    async def _handshake(self, host: str, target: str, headers: Sequence[tuple[str, str]]) -> None:
        self._writer.write(
            self._ws.send(
                ws.Request(
                    host=host,
                    target=target,
                    extra_headers=[(k.encode(), v.encode()) for k, v in headers],
                )
            )
        )
        await self._writer.drain()
        while True:
            event = await self._next()
            if isinstance(event, ws.AcceptConnection):
                return
            if isinstance(event, ws.RejectConnection):
                raise ConnectionError(f"WebSocket upgrade refused with HTTP {event.status_code}")

    async def _next(self) -> ws.Event:
        while not self._pending:
            chunk = await self._reader.read(_READ)
            self._ws.receive_data(chunk or None)
            self._pending.extend(self._ws.events())
            if not chunk and not self._pending:
                raise ConnectionError("connection closed by the proxy")
        return self._pending.pop(0)

    async def send(self, message: str | bytes) -> None:
        event: ws.Event = (
            ws.TextMessage(data=message)
            if isinstance(message, str)
            else ws.BytesMessage(data=message)
        )
        self._writer.write(self._ws.send(event))
        await self._writer.drain()

    async def receive(self) -> str | bytes:
        """The next complete message (fragments joined)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                event = await self._next()
                if isinstance(event, ws.TextMessage):
                    self._text.append(event.data)
                    if event.message_finished:
                        text = "".join(self._text)
                        self._text.clear()
                        return text
                elif isinstance(event, ws.BytesMessage):
                    self._bytes.append(bytes(event.data))
                    if event.message_finished:
                        data = b"".join(self._bytes)
                        self._bytes.clear()
                        return data
                elif isinstance(event, ws.Ping):
                    self._writer.write(self._ws.send(event.response()))
                elif isinstance(event, ws.CloseConnection):
                    raise ConnectionError(f"WebSocket closed with code {event.code}")

    async def aclose(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> WebSocketClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
