"""The WebSocket relay: after a ``101 Switching Protocols``, copy bytes both ways.

The proxy does not parse frames: once the backend has accepted the upgrade, the two sockets are
joined until either side closes. The bytes each h11 machine had already read past the HTTP
handshake (``Connection.trailing_data``, as in wsproto's handshake hand-off) are sent first.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.abc

_TRANSPORT_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


async def relay(
    client: anyio.abc.ByteStream,
    backend: anyio.abc.ByteStream,
    *,
    client_pending: bytes,
    backend_pending: bytes,
    on_traffic: Callable[[], None],
    read_size: int = 65536,
) -> None:
    """Copy bytes client <-> backend until either side closes or fails; then return."""

    async def pump(
        src: anyio.abc.ByteStream,
        dst: anyio.abc.ByteStream,
        pending: bytes,
        scope: anyio.CancelScope,
    ) -> None:
        try:
            if pending:
                on_traffic()
                await dst.send(pending)
            while True:
                try:
                    data = await src.receive(read_size)
                except anyio.EndOfStream:
                    return
                on_traffic()
                await dst.send(data)
        except _TRANSPORT_ERRORS:
            return
        finally:
            scope.cancel()

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump, client, backend, client_pending, tg.cancel_scope)
        tg.start_soon(pump, backend, client, backend_pending, tg.cancel_scope)
