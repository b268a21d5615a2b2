"""The cap on client connections, and the accept loop that survives running out of descriptors.

Theory of operation. Every client connection costs a file descriptor, and one more while it has
a backend connection (a request in flight, a WebSocket); the backend pool keeps up to
``pool_max_idle_total`` idle ones on top. A process that runs out of descriptors cannot open a
backend connection, a log file or an etcd stream either, so the proxy caps what it accepts
*below* the limit instead of finding it: :class:`ConnectionGate` counts the client connections
being served by one :class:`~eventproxy_dataplane.DataPlane` (all its proxy listeners together:
the descriptor budget is the process's), and one beyond ``limit`` is closed as soon as it is
accepted, before anything is read from it or sent to it. Existing connections are not touched.

Why close, not answer ``503``: a response written before the request was read is lost when the
close finds unread request bytes (the kernel then resets the connection), and reading the
request first would hold the descriptor for as long as a slow client likes -- exactly what a
cap must not allow. Closing at once costs microseconds, can be neither slowed down nor amplified,
and is what node's ``server.maxConnections`` (configurable-http-proxy's server) does. Clients see
a closed connection (an HTTP client reports a connection error and may retry).

Without a configured ``max_connections`` the cap comes from the soft ``RLIMIT_NOFILE``
(:func:`default_max_connections`): half of what is left after a reserve for everything else the
process holds (``FD_RESERVE``), a burst of connections accepted in one go before they can be
refused (``ACCEPT_BURST``, the asyncio listener's accept batch) and the idle backend pool.
With the usual ``ulimit -n 1024`` and the default pool that is 288.

If the process runs out of descriptors anyway (another part of a hub opening files), ``accept``
fails with ``EMFILE``: :func:`accept_forever` then waits (50 ms, doubling up to 1 s) and tries
again, so the listener neither dies nor spins; the asyncio protocol edge gets the same from
asyncio itself (one second's pause).
"""

from __future__ import annotations

import errno
import logging
import resource
from collections.abc import Callable, Coroutine
from typing import Any, Final

import anyio
import anyio.abc

logger = logging.getLogger("eventproxy_dataplane")

__all__ = [
    "ACCEPT_BURST",
    "FD_RESERVE",
    "AcceptErrors",
    "ConnectionGate",
    "accept_forever",
    "default_max_connections",
    "nofile_soft_limit",
]

FD_RESERVE: Final = 64
ACCEPT_BURST: Final = 128
_MIN_CONNECTIONS: Final = 16
_RESOURCE_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_RETRY_FIRST: Final = 0.05
_RETRY_MAX: Final = 1.0


def nofile_soft_limit() -> int | None:
    """The soft limit on open files, or None when there is none."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY or soft < 0 else int(soft)


def default_max_connections(nofile: int | None, pool_max_idle_total: int) -> int:
    """The client-connection cap for a soft ``RLIMIT_NOFILE`` of ``nofile`` (None: unlimited).

    ``(nofile - FD_RESERVE - ACCEPT_BURST - pool_max_idle_total) // 2`` (each connection may hold
    a backend connection too), at least 16; 1024 -> 288, 65536 -> 32,544. Unlimited: 100,000.
    """
    if nofile is None:
        return 100_000
    budget = nofile - FD_RESERVE - ACCEPT_BURST - pool_max_idle_total
    return max(_MIN_CONNECTIONS, budget // 2)


class ConnectionGate:
    """Counts the client connections being served; refuses those beyond ``limit``."""

    __slots__ = ("limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a connection limit must be at least 1, got {limit}")
        self.limit = limit
        self.open = 0
        self.refused = 0

    def admit(self) -> bool:
        """Take a place (True), or count a refusal (False) when all ``limit`` are taken."""
        if self.open >= self.limit:
            self.refused += 1
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        """Give back the place an admitted connection took."""
        if self.open <= 0:
            raise RuntimeError("ConnectionGate.leave without a matching admit")
        self.open -= 1


class AcceptErrors:
    """Accept failures for lack of resources (EMFILE...), for /metrics."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


async def accept_forever(
    listener: anyio.abc.SocketListener,
    handle: Callable[[anyio.abc.SocketStream], Coroutine[Any, Any, Any]],
    task_group: anyio.abc.TaskGroup,
    errors: AcceptErrors,
) -> None:
    """Accept on ``listener`` and start ``handle(stream)`` in ``task_group`` for each, until
    cancelled. Running out of descriptors (or buffers) waits and retries: it never ends the
    loop and never spins; any other accept error ends it (a closed listener)."""
    delay = _RETRY_FIRST
    while True:
        try:
            stream = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as exc:
            # asyncio raises the OSError; anyio's trio backend wraps it (as the __cause__)
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(cause, OSError) or cause.errno not in _RESOURCE_ERRNOS:
                raise
            errors.count += 1
            if delay == _RETRY_FIRST:
                logger.warning(
                    "accept failed (%s): out of descriptors or buffers; retrying, existing "
                    "connections are still served (lower max_connections or raise ulimit -n)",
                    cause.strerror or cause,
                )
            await anyio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
            continue
        delay = _RETRY_FIRST
        task_group.start_soon(handle, stream)
