"""The anyio edge: drives one :class:`._core.ClientCore` per client connection over byte streams.

Theory of operation. The proxy logic lives in :mod:`._core` (events in, actions out). This
module only does what the core asks, with awaits: it executes the core's actions in order
(a write awaits the stream, so a slow reader holds the writer, which is the back-pressure),
then reads from the side the core wants (``read_client`` / ``read_backend``) and feeds what it
read back in. While a request body is still arriving and the response is awaited, both sides
are read at once: two reader tasks feed the core and one of them at a time (a lock) executes
the actions, in the order the core produced them.

Timeouts: the listener's :func:`watchdog` looks at every connection's ``core.deadline`` and
cancels the connection's scope once it has passed; the driver then calls
``core.deadline_passed()`` and carries out what it answers (408, 504, close).

The backend connection pool (:mod:`._backend`) and the error-page fetch are this edge's; every
transport failure is turned into a core input (``client_failed``, ``backend_failed`` with a
:class:`BackendError`) here, so the core never sees an ``OSError`` or an anyio exception.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from ._backend import BackendConnection, BackendPool, fetch
from ._core import (
    NEVER,
    AcquireBackend,
    Action,
    ClientCore,
    CoreContext,
    EmptyTable,
    FetchErrorPage,
    RelayWebSocket,
    ReleaseBackend,
    RouteLike,
    SendBackend,
    SendClient,
    TableLike,
)
from ._errors import BackendError, BackendProtocolError
from ._settings import ProxySettings
from ._ws import relay

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("eventproxy_dataplane.proxy")
_TRANSPORT_ERRORS = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class LiveConnection(Protocol):
    """A client connection the watchdog looks after (any edge)."""

    @property
    def core(self) -> ClientCore: ...

    def timed_out(self) -> None: ...


class ProxyState(CoreContext):
    """What every connection of one data plane shares: the core's context plus the pool and
    the set of live connections (for the watchdog)."""

    __slots__ = ("connections", "pool")

    def __init__(self, table: TableLike, settings: ProxySettings) -> None:
        pool = BackendPool(settings)
        clock: Callable[[], float] = anyio.current_time
        super().__init__(table, settings, address=pool.address, clock=clock)
        self.pool = pool
        self.connections: set[LiveConnection] = set()

    def set_clock(self) -> None:
        """Use the running loop's clock directly (anyio.current_time looks the loop up)."""
        try:
            import sniffio

            library = sniffio.current_async_library()
        except Exception:
            return
        if library == "asyncio":
            import asyncio

            self.clock = asyncio.get_running_loop().time
        elif library == "trio":
            import trio

            self.clock = trio.current_time


class ClientConnection:
    """Serves one accepted client stream until it closes, fails, or times out."""

    __slots__ = ("backend", "core", "queue", "read_size", "scope", "state", "stream")

    def __init__(
        self,
        state: ProxyState,
        stream: anyio.abc.ByteStream,
        *,
        client_ip: bytes | None,
        tls: bool,
    ) -> None:
        self.state = state
        self.stream = stream
        self.core = ClientCore(state, client_ip=client_ip, tls=tls)
        self.backend: BackendConnection | None = None
        self.read_size = state.settings.read_size
        self.scope = anyio.CancelScope()
        self.queue: deque[Action] = deque()

    def timed_out(self) -> None:
        """The watchdog: ``core.deadline`` has passed (the driver asks the core what now)."""
        self.core.deadline = NEVER  # once; deadline_passed() answers with the phase
        self.scope.cancel()

    async def run(self) -> None:
        state = self.state
        core = self.core
        state.connections.add(self)
        try:
            self.queue.extend(core.start())
            while True:
                with anyio.CancelScope() as scope:
                    self.scope = scope
                    await self._drive()
                if not scope.cancelled_caught:
                    break
                # the watchdog: the deadline passed while we waited
                self.queue.clear()
                self.queue.extend(core.deadline_passed())
        except Exception:
            # A bug must cost one connection, never the listener (or the hub it runs in).
            logger.exception("unexpected error while serving a client connection")
        finally:
            state.connections.discard(self)
            core.closed()
            backend, self.backend = self.backend, None
            with anyio.CancelScope(shield=True):
                if backend is not None:
                    await state.pool.release(backend)  # not reusable: closed
                await anyio.aclose_forcefully(self.stream)

    async def _drive(self) -> None:
        core = self.core
        queue = self.queue
        while True:
            while queue:
                await self._execute(queue.popleft())
            if core.finished:
                return
            if core.read_backend:
                if core.read_client:
                    await self._read_both()
                    continue
                queue.extend(await self._from_backend())
            elif core.read_client:
                queue.extend(await self._from_client())
            else:  # pragma: no cover - the core always waits for something
                raise AssertionError("the connection core waits for nothing")

    async def _from_client(self) -> list[Action]:
        try:
            data = await self.stream.receive(self.read_size)
        except anyio.EndOfStream:
            data = b""
        except _TRANSPORT_ERRORS:
            return self.core.client_failed()
        return self.core.client_data(data)

    async def _from_backend(self) -> list[Action]:
        backend = self.backend
        assert backend is not None
        try:
            data = await backend.stream.receive(self.read_size)
        except anyio.EndOfStream:
            data = b""
        except _TRANSPORT_ERRORS as exc:
            return self.core.backend_failed(
                BackendProtocolError(f"backend {backend.address.url} reset the connection: {exc!r}")
            )
        return self.core.backend_data(data)

    async def _read_both(self) -> None:
        """Read both sides until the core stops wanting both (a request body streams while
        the response is awaited)."""
        core = self.core
        queue = self.queue
        lock = anyio.Lock()

        async with anyio.create_task_group() as tg:

            async def execute() -> None:
                async with lock:
                    while queue:
                        await self._execute(queue.popleft())
                    if core.finished or not (core.read_client and core.read_backend):
                        tg.cancel_scope.cancel()

            async def client() -> None:
                while True:
                    queue.extend(await self._from_client())
                    await execute()

            async def backend() -> None:
                while True:
                    queue.extend(await self._from_backend())
                    await execute()

            tg.start_soon(client)
            tg.start_soon(backend)

    async def _execute(self, action: Action) -> None:
        if type(action) is SendClient:
            try:
                await self.stream.send(action.data)
            except _TRANSPORT_ERRORS:
                self.queue.clear()
                self.queue.extend(self.core.client_failed())
        elif type(action) is SendBackend:
            backend = self.backend
            assert backend is not None
            try:
                await backend.stream.send(action.data)
            except _TRANSPORT_ERRORS as exc:
                self.queue.clear()
                self.queue.extend(
                    self.core.backend_failed(
                        BackendProtocolError(
                            f"backend {backend.address.url} closed the connection while we "
                            f"sent: {exc!r}"
                        )
                    )
                )
        elif type(action) is AcquireBackend:
            try:
                conn, reused = await self.state.pool.acquire(action.url)
            except BackendError as exc:
                self.queue.extend(self.core.backend_unavailable(exc))
                return
            self.backend = conn
            self.queue.extend(self.core.backend_acquired(conn.parser, reused))
        elif type(action) is ReleaseBackend:
            conn2 = self.backend
            self.backend = None
            if conn2 is not None:
                conn2.request_sent = conn2.response_done = action.reusable
                await self.state.pool.release(conn2)
        elif type(action) is FetchErrorPage:
            await self._fetch_error_page(action.url)
        elif type(action) is RelayWebSocket:
            await self._relay(action)
        # CloseClient: the core is finished; run() closes the stream

    async def _fetch_error_page(self, url: str) -> None:
        try:
            with anyio.fail_after(self.state.settings.error_fetch_timeout):
                page = await fetch(self.state.pool, url)
        except (BackendError, TimeoutError):
            self.queue.extend(self.core.error_page(None, None))
        else:
            self.queue.extend(self.core.error_page(page.body, page.content_type))

    async def _relay(self, action: RelayWebSocket) -> None:
        backend = self.backend
        assert backend is not None
        activity = self.state.activity
        router = action.router
        await relay(
            self.stream,
            backend.stream,
            client_pending=action.client_pending,
            backend_pending=action.backend_pending,
            on_traffic=lambda: activity.touch(router),
            read_size=self.read_size,
        )


def watchdog_tick(settings: ProxySettings) -> float:
    """How often the watchdog looks at deadlines: a quarter of the shortest timeout, in
    [0.01 s, 1 s] (so a timeout fires at most that much late)."""
    timeouts = [
        t
        for t in (settings.header_timeout, settings.idle_timeout, settings.backend_response_timeout)
        if t is not None
    ]
    if not timeouts:
        return 1.0
    return min(1.0, max(0.01, min(timeouts) / 4))


async def watchdog(state: ProxyState) -> None:
    """Cancel every connection whose deadline has passed; runs until cancelled."""
    tick = watchdog_tick(state.settings)
    connections = state.connections
    while True:
        await anyio.sleep(tick)
        now = state.clock()
        for conn in [c for c in connections if c.core.deadline <= now]:
            conn.timed_out()


__all__ = [
    "ClientConnection",
    "EmptyTable",
    "ProxyState",
    "RouteLike",
    "TableLike",
    "watchdog",
    "watchdog_tick",
]
