"""The callback edge: asyncio ``Protocol`` callbacks drive the connection core, no task per request.

Theory of operation. Each accepted socket is a :class:`._proxy_fast._StreamProtocol` in
callback mode: ``data_received`` / ``eof_received`` / ``connection_lost`` /
``pause_writing`` / ``resume_writing`` call a :class:`CallbackConnection`, which feeds the
:class:`._core.ClientCore` and executes the actions it returns right there, synchronously:
``transport.write`` for a send, ``pause_reading``/``resume_reading`` for what the core wants
read, the pool's synchronous ``acquire_idle``/``release_now`` for a pooled backend. Backend
connections are the same protocol (the pool keeps them; while one is lent out, its callbacks
go to the connection that holds it). Only three things still need a coroutine, each a task
that reports back through the same entry point: connecting a new backend connection, fetching
an ``error_target`` page, and nothing else; the WebSocket relay after a 101 is two callback
pairs writing transport to transport.

Back-pressure: a side whose peer's write buffer is full (``pause_writing``) is not read until
``resume_writing``; a side the core does not want to read (``read_client`` / ``read_backend``)
is paused once bytes it did not ask for arrive (they wait in the core's parser).

Re-entrancy: a callback that arrives while actions are being executed (a write can call
``pause_writing`` at once) queues its actions behind the current ones.

Timeouts: the listener's watchdog (:func:`._proxy.watchdog`) calls :meth:`timed_out` on a
connection whose ``core.deadline`` passed.

This edge runs on any asyncio event loop (stock asyncio inside JupyterHub, uvloop for a node);
trio uses the anyio edge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from ._backend import BackendConnection, fetch
from ._core import (
    NEVER,
    AcquireBackend,
    Action,
    ClientCore,
    CloseClient,
    FetchErrorPage,
    RelayWebSocket,
    ReleaseBackend,
    SendBackend,
    SendClient,
)
from ._errors import BackendError, BackendProtocolError
from ._limits import ConnectionGate
from ._proxy import ProxyState
from ._proxy_fast import FastStream, _StreamProtocol, listen_protocols

logger = logging.getLogger("eventproxy_dataplane")


class CallbackConnection:
    """One client connection on the callback edge (see the module docstring)."""

    __slots__ = (
        "backend",
        "backend_blocked",
        "bp",
        "busy",
        "client",
        "client_blocked",
        "core",
        "cp",
        "done",
        "on_done",
        "pending",
        "relaying",
        "router",
        "state",
        "tasks",
    )

    def __init__(
        self,
        state: ProxyState,
        protocol: _StreamProtocol,
        *,
        client_ip: bytes | None,
        tls: bool,
        on_done: Callable[[CallbackConnection], None],
    ) -> None:
        self.state = state
        self.cp = protocol
        self.client = FastStream(protocol)
        self.core = ClientCore(state, client_ip=client_ip, tls=tls)
        self.backend: BackendConnection | None = None
        self.bp: _StreamProtocol | None = None
        self.busy = False
        self.pending: list[Action] = []
        self.done = False
        self.relaying = False
        self.router = ""
        self.client_blocked = False  # the client's write buffer is full
        self.backend_blocked = False  # the backend's write buffer is full
        self.tasks: set[asyncio.Task[None]] = set()
        self.on_done = on_done

    def start(self) -> None:
        cp = self.cp
        cp.sink = self.client_data
        cp.sink_lost = self.client_lost
        cp.on_writable = self.client_writable
        self.client_blocked = cp.write_paused
        self.state.connections.add(self)
        buffered = cp.take_buffer()
        actions = self.core.start()
        if buffered:
            actions += self.core.client_data(buffered)
        self.run(actions)

    # -- callbacks -------------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        wanted = self.core.read_client
        self.run(self.core.client_data(data))
        if not wanted and not self.done and not self.core.read_client:
            self.cp.set_reading(False)  # bytes the core did not ask for: now stop (lazily)

    def client_lost(self, exc: BaseException | None) -> None:
        if not self.done:
            self.run(self.core.client_failed())
            self._finish()

    def client_writable(self, writable: bool) -> None:
        self.client_blocked = not writable
        if not self.busy:
            self._sync_reading()

    def backend_data(self, data: bytes) -> None:
        self.run(self.core.backend_data(data))

    def backend_lost(self, exc: BaseException | None) -> None:
        backend = self.backend
        if backend is not None and not self.done:
            self.run(
                self.core.backend_failed(
                    BackendProtocolError(
                        f"backend {backend.address.url} closed the connection: {exc!r}"
                    )
                )
            )

    def backend_writable(self, writable: bool) -> None:
        self.backend_blocked = not writable
        if not self.busy:
            self._sync_reading()

    def timed_out(self) -> None:
        """The watchdog: ``core.deadline`` has passed."""
        self.core.deadline = NEVER
        if not self.done:
            self.run(self.core.deadline_passed())

    def abort(self) -> None:
        """The listener is shutting down: close now."""
        if not self.done:
            transport = self.cp.transport
            if transport is not None:
                transport.abort()
            self._finish()

    # -- executing actions -----------------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        if self.busy:
            self.pending.extend(actions)
            return
        self.busy = True
        try:
            queue = actions
            while True:
                for action in queue:
                    more = self._execute(action)
                    if more:
                        self.pending.extend(more)
                if not self.pending:
                    break
                queue, self.pending = self.pending, []
        except Exception:
            # A bug must cost one connection, never the listener (or the hub it runs in).
            logger.exception("unexpected error while serving a client connection")
            self.pending = []
            self._finish()
        finally:
            self.busy = False
        if not self.done:
            self._sync_reading()

    def _execute(self, action: Action) -> list[Action] | None:
        if self.done:
            return None
        if type(action) is SendClient:
            transport = self.cp.transport
            if transport is not None and not transport.is_closing():
                transport.write(action.data)
            return None
        if type(action) is SendBackend:
            bp = self.bp
            backend = self.backend
            assert bp is not None and backend is not None
            transport2 = bp.transport
            if bp.lost or transport2 is None or transport2.is_closing():
                return self.core.backend_failed(
                    BackendProtocolError(f"backend {backend.address.url} closed the connection")
                )
            transport2.write(action.data)
            return None
        if type(action) is AcquireBackend:
            conn = self.state.pool.acquire_idle(action.url)
            if conn is not None:
                return self._attach(conn, True)
            self._spawn(self._connect(action.url))
            return None
        if type(action) is ReleaseBackend:
            conn2 = self._detach()
            if conn2 is not None:
                conn2.request_sent = conn2.response_done = action.reusable
                self.state.pool.release_now(conn2)
            return None
        if type(action) is FetchErrorPage:
            self._spawn(self._fetch(action.url))
            return None
        if type(action) is RelayWebSocket:
            self._relay(action)
            return None
        if type(action) is CloseClient:
            self._finish()
        return None

    def _sync_reading(self) -> None:
        """Read a side when the core wants it; stop reading a side when the other cannot take
        what it sends (back-pressure). A side the core merely does not want now is paused
        lazily, when bytes it did not ask for arrive (:meth:`client_data`): a kept-alive
        client waiting for its response then costs no pause/resume (two selector changes per
        request on the stock loop)."""
        core = self.core
        bp = self.bp
        if self.relaying:
            self.cp.set_reading(not self.backend_blocked)
            if bp is not None:
                bp.set_reading(not self.client_blocked)
            return
        if bp is not None and self.backend_blocked:
            self.cp.set_reading(False)
        elif core.read_client:
            self.cp.set_reading(True)
        if bp is not None:
            if self.client_blocked:
                bp.set_reading(False)
            elif core.read_backend:
                bp.set_reading(True)

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- backend connections ---------------------------------------------------------------

    def _attach(self, conn: BackendConnection, reused: bool) -> list[Action]:
        stream = conn.stream
        assert isinstance(stream, FastStream)
        bp = stream.protocol
        self.backend = conn
        self.bp = bp
        bp.sink = self.backend_data
        bp.sink_lost = self.backend_lost
        bp.on_writable = self.backend_writable
        self.backend_blocked = bp.write_paused
        buffered = bp.take_buffer()
        actions = self.core.backend_acquired(conn.parser, reused)
        # bytes (or a close) that came before the core held it: the core judges them
        if buffered:
            actions += self.core.backend_data(buffered)
        if bp.eof:
            actions += self.core.backend_data(b"")
        return actions

    def _detach(self) -> BackendConnection | None:
        conn, self.backend = self.backend, None
        bp, self.bp = self.bp, None
        if bp is not None:
            bp.sink = None
            bp.sink_lost = None
            bp.on_writable = None
            bp.set_reading(True)  # an idle pooled connection must see the backend's close
        self.backend_blocked = False
        return conn

    async def _connect(self, url: str) -> None:
        try:
            conn, reused = await self.state.pool.acquire(url)
        except BackendError as exc:
            if not self.done:
                self.run(self.core.backend_unavailable(exc))
            return
        if self.done:
            self.state.pool.release_now(conn)  # not reusable: closed
            return
        try:
            actions = self._attach(conn, reused)
        except Exception:
            logger.exception("unexpected error while serving a client connection")
            if self.backend is not conn:
                conn.request_sent = conn.response_done = False
                self.state.pool.release_now(conn)  # closed
            self._finish()
            return
        self.run(actions)

    async def _fetch(self, url: str) -> None:
        try:
            with anyio.fail_after(self.state.settings.error_fetch_timeout):
                page = await fetch(self.state.pool, url)
        except (BackendError, TimeoutError):
            if not self.done:
                self.run(self.core.error_page(None, None))
            return
        if not self.done:
            self.run(self.core.error_page(page.body, page.content_type))

    # -- the WebSocket relay ---------------------------------------------------------------

    def _relay(self, action: RelayWebSocket) -> None:
        bp = self.bp
        assert bp is not None and bp.transport is not None
        self.relaying = True
        self.router = action.router
        cp = self.cp
        cp.sink = self._from_client
        cp.sink_lost = self._relay_lost
        bp.sink = self._from_backend
        bp.sink_lost = self._relay_lost
        if action.client_pending:
            self.state.activity.touch(self.router)
            bp.transport.write(action.client_pending)
        if action.backend_pending:
            self.state.activity.touch(self.router)
            if cp.transport is not None:
                cp.transport.write(action.backend_pending)

    def _from_client(self, data: bytes) -> None:
        bp = self.bp
        if not data or bp is None or bp.transport is None or bp.transport.is_closing():
            self._finish()
            return
        self.state.activity.touch(self.router)
        bp.transport.write(data)

    def _from_backend(self, data: bytes) -> None:
        transport = self.cp.transport
        if not data or transport is None or transport.is_closing():
            self._finish()
            return
        self.state.activity.touch(self.router)
        transport.write(data)

    def _relay_lost(self, exc: BaseException | None) -> None:
        self._finish()

    # -- the end ---------------------------------------------------------------------------

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.core.closed()
        conn = self._detach()
        if conn is not None:
            conn.request_sent = conn.response_done = False
            self.state.pool.release_now(conn)  # closed
        cp = self.cp
        cp.sink = None
        cp.sink_lost = None
        cp.on_writable = None
        self.client.close_now()
        for task in list(self.tasks):
            task.cancel()
        self.state.connections.discard(self)
        self.on_done(self)


def _peer_ip(protocol: _StreamProtocol) -> bytes | None:
    transport = protocol.transport
    if transport is None:
        return None
    address = transport.get_extra_info("peername")
    if isinstance(address, tuple):
        return str(address[0]).encode("ascii")
    return None


async def serve_callback(
    state: ProxyState,
    gate: ConnectionGate,
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    unix_path: str | None = None,
    task_status: anyio.abc.TaskStatus[Any] = anyio.TASK_STATUS_IGNORED,
    backlog: int = 1024,
) -> None:
    """Accept connections and serve each on the callback edge, until cancelled.

    TCP on ``host:port`` (``task_status`` gets the bound port), or a Unix socket at
    ``unix_path`` (``task_status`` gets the path). Beyond ``gate``'s limit a new connection is
    closed as soon as it is accepted. Cancelling closes the listener and every connection.
    """
    tls = ssl_context is not None
    live: set[CallbackConnection] = set()

    def done(conn: CallbackConnection) -> None:
        live.discard(conn)
        gate.leave()

    def made(protocol: _StreamProtocol) -> None:
        if not gate.admit():
            FastStream(protocol).close_now()
            return
        conn = CallbackConnection(
            state,
            protocol,
            client_ip=None if unix_path is not None else _peer_ip(protocol),
            tls=tls,
            on_done=done,
        )
        live.add(conn)
        conn.start()

    server, where = await listen_protocols(
        made,
        host,
        port,
        ssl_context=ssl_context,
        unix_path=unix_path,
        backlog=backlog,
        edge="asyncio callback edge",
    )
    try:
        task_status.started(where)
        await anyio.sleep_forever()
    finally:
        server.close()
        for conn in list(live):
            conn.abort()
        with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
            await server.wait_closed()
