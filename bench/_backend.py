"""The benchmark's loopback backend: a fixed tiny HTTP response, and a WebSocket echo.

``python -m bench._backend --port PORT`` serves on 127.0.0.1 until SIGTERM. It must never be
the bottleneck, so it is a bare asyncio ``Protocol`` (on uvloop when installed) with a minimal
parser: it finds the end of each request head, skips a ``Content-Length`` body, and answers
every request with the same small response on a kept-alive connection. It is a load target,
not a web server: chunked request bodies are refused with 501.

A request with ``Upgrade: websocket`` gets the RFC 6455 handshake, after which each complete
data frame from the client (masked, unfragmented, as our client sends) is echoed back unmasked;
a close frame is answered with a close frame.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import struct
from typing import cast

BODY = b"hello from the bench backend\n"
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)
CLOSE_RESPONSE = RESPONSE.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
NOT_IMPLEMENTED = b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 64 * 1024


def _headers(head: bytes) -> dict[bytes, bytes]:
    """Lower-cased header names -> values (last one wins; good enough for a load target)."""
    out: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().lower()] = value.strip()
    return out


def ws_accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return header + payload


def _unmask(mask: bytes, data: bytes) -> bytes:
    if not data:
        return data
    key = int.from_bytes((mask * (len(data) // 4 + 1))[: len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


class BackendProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.skip = 0  # request-body bytes still to discard
        self.websocket = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.websocket:
            self._ws_frames()
        else:
            self._http_requests()

    # -- HTTP --------------------------------------------------------------------------------
    def _http_requests(self) -> None:
        assert self.transport is not None
        out: list[bytes] = []
        while True:
            if self.skip:
                dropped = min(self.skip, len(self.buf))
                del self.buf[:dropped]
                self.skip -= dropped
                if self.skip:
                    break
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    out.append(BAD_REQUEST)
                    self._finish(out, close=True)
                    return
                break
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            lower = head.lower()
            if b"\r\nupgrade:" in lower and b"websocket" in lower:
                self._ws_handshake(head, out)
                self.websocket = True
                if self.buf:
                    self._ws_frames()
                return
            if b"\r\ncontent-length:" in lower or b"\r\ntransfer-encoding:" in lower:
                headers = _headers(head)
                if b"transfer-encoding" in headers:
                    out.append(NOT_IMPLEMENTED)
                    self._finish(out, close=True)
                    return
                try:
                    self.skip = int(headers.get(b"content-length", b"0"))
                except ValueError:
                    out.append(BAD_REQUEST)
                    self._finish(out, close=True)
                    return
            if b"\r\nconnection: close" in lower or head.endswith(b"HTTP/1.0"):
                out.append(CLOSE_RESPONSE)
                self._finish(out, close=True)
                return
            out.append(RESPONSE)
        self._finish(out, close=False)

    def _finish(self, out: list[bytes], *, close: bool) -> None:
        assert self.transport is not None
        if out:
            self.transport.write(b"".join(out))
        if close:
            self.transport.close()

    # -- WebSocket ---------------------------------------------------------------------------
    def _ws_handshake(self, head: bytes, out: list[bytes]) -> None:
        key = _headers(head).get(b"sec-websocket-key", b"")
        out.append(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + ws_accept(key) + b"\r\n\r\n"
        )
        self._finish(out, close=False)

    def _ws_frames(self) -> None:
        assert self.transport is not None
        out: list[bytes] = []
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            opcode, n, pos = b0 & 0x0F, b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    break
                n, pos = struct.unpack_from("!H", self.buf, 2)[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    break
                n, pos = struct.unpack_from("!Q", self.buf, 2)[0], 10
            masked = bool(b1 & 0x80)
            need = pos + (4 if masked else 0) + n
            if len(self.buf) < need:
                break
            mask = bytes(self.buf[pos : pos + 4]) if masked else b""
            start = pos + len(mask)
            payload = bytes(self.buf[start:need])
            del self.buf[:need]
            if masked:
                payload = _unmask(mask, payload)
            if opcode == 0x8:  # close: answer and hang up
                out.append(_ws_frame(0x8, payload[:2]))
                self._finish(out, close=True)
                return
            if opcode == 0x9:  # ping -> pong
                out.append(_ws_frame(0xA, payload))
            elif opcode in (0x1, 0x2):
                out.append(_ws_frame(opcode, payload))
        self._finish(out, close=False)


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(BackendProtocol, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"bench backend listening on 127.0.0.1:{port}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._backend", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1")
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.port))
    else:
        uvloop.run(serve(args.port))


if __name__ == "__main__":
    main()
