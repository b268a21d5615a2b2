"""The soak benchmark's backends: many single-user-server stand-ins in one process.

``python -m bench._soak_backend --count N`` listens on N ports of 127.0.0.1 (the kernel picks
them) and prints one line ``PORTS p1,p2,...`` once all are bound; it serves until SIGTERM.
Each port answers like :mod:`bench._backend` (a small 200 on a kept-alive connection, and a
WebSocket echo after the RFC 6455 handshake), and, like node's HTTP server (what
configurable-http-proxy and most single-user servers run on), closes a kept-alive connection
that has been idle for ``--keepalive`` seconds (default 5). That close is what leaves sockets
in CLOSE_WAIT in a proxy whose pool does not notice it.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import time

from bench._backend import BackendProtocol


class IdleClosingProtocol(BackendProtocol):
    """A bench backend connection that records when it was last busy."""

    live: set[IdleClosingProtocol] = set()

    def __init__(self) -> None:
        super().__init__()
        self.last = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        IdleClosingProtocol.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        IdleClosingProtocol.live.discard(self)

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        super().data_received(data)


async def close_idle(keepalive: float) -> None:
    while True:
        await asyncio.sleep(min(1.0, keepalive / 4))
        limit = time.monotonic() - keepalive
        for conn in list(IdleClosingProtocol.live):
            # WebSocket connections stay open as long as the client keeps them
            if not conn.websocket and conn.last < limit and conn.transport is not None:
                conn.transport.close()


async def serve(count: int, keepalive: float) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    ports = []
    for _ in range(count):
        server = await loop.create_server(IdleClosingProtocol, "127.0.0.1", 0, backlog=256)
        servers.append(server)
        ports.append(server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    sweeper = asyncio.create_task(close_idle(keepalive))
    print("PORTS " + ",".join(map(str, ports)), flush=True)
    await stop.wait()
    sweeper.cancel()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._soak_backend", description=__doc__)
    parser.add_argument("--count", type=int, required=True, help="ports to listen on")
    parser.add_argument("--keepalive", type=float, default=5.0, help="idle keep-alive close, s")
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4096)) if hard != resource.RLIM_INFINITY else max(soft, 4096)
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args.count, args.keepalive))
    else:
        uvloop.run(serve(args.count, args.keepalive))


if __name__ == "__main__":
    main()
