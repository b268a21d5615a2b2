"""The data plane: listeners (TCP, TLS, Unix, admin) around the per-connection proxy.

``DataPlane`` owns the shared state of one node: the routing table, the backend connection
pool, counters and per-router activity. The table changes only through :meth:`DataPlane.apply`
(a batch of upserts and removals; :meth:`DataPlane.set_table` hands it the difference to a
whole new table), which does the bookkeeping synchronously, in the same step as the change:
the generation moves, routers that are gone lose their activity record and counters (a router
that now sends to other servers loses its activity record: a re-added route starts with no
``last_activity``), and the pool closes the connections to servers no route sends to any more.
Nothing else may change the table (``table`` is for reading), or these fall out of step.

Each ``serve_*`` coroutine runs until it is cancelled; cancelling it closes its listener and
every connection it accepted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import anyio
import anyio.abc
import h11
from anyio.streams.stapled import MultiListener
from anyio.streams.tls import TLSStream

from ._backend import BackendPool
from ._config import ConfigProblem, RouterSpec, ServiceSpec
from ._edge_callback import serve_callback
from ._limits import (
    ACCEPT_BURST,
    AcceptErrors,
    ConnectionGate,
    accept_forever,
    default_max_connections,
    nofile_soft_limit,
)
from ._proxy import ClientConnection, ProxyState, watchdog
from ._proxy_fast import FastStream, fast_edge_available, serve_fast
from ._routing import Route, RoutingTable
from ._settings import ProxySettings

logger = logging.getLogger("eventproxy_dataplane")

_DEFAULT_SETTINGS = ProxySettings()
_TLS_HANDSHAKE_TIMEOUT = 30.0


def _peer_ip(stream: anyio.abc.ByteStream) -> bytes | None:
    try:
        address = stream.extra(anyio.abc.SocketAttribute.remote_address)
    except anyio.TypedAttributeLookupError:
        return None
    if isinstance(address, tuple):
        return str(address[0]).encode("ascii")
    return None


def _servers(route: Route | None) -> frozenset[str]:
    return frozenset(s.url for s in route.service.servers) if route is not None else frozenset()


async def _housekeeping(state: ProxyState, turn: anyio.Lock) -> None:
    """Connection deadlines and the backend pool's sweep, until cancelled: one of each per
    plane, run by whichever proxy listener holds ``turn`` (the others wait, and one takes
    over when it stops)."""
    async with turn, anyio.create_task_group() as tg:
        tg.start_soon(watchdog, state)
        tg.start_soon(state.pool.maintain)


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@`` (what the admin API shows)."""
    scheme, sep, rest = url.partition("://")
    authority = rest.split("/", 1)[0]
    if not sep or "@" not in authority:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


class DataPlane:
    """One reverse-proxy node: route with ``table``, forward with ``settings``.

    The table changes with :meth:`apply` only (:meth:`set_table` calls it); a request looks it up
    once, so requests in flight finish on the backend they were routed to and no connection is
    dropped by a change.
    """

    def __init__(
        self, table: RoutingTable | None = None, settings: ProxySettings = _DEFAULT_SETTINGS
    ) -> None:
        self._table = RoutingTable()
        self._state = ProxyState(self._table, settings)
        self.settings = settings
        self._users: dict[str, int] = {}  # server URL -> routers sending to it
        limit = settings.max_connections
        if limit is None:
            limit = default_max_connections(nofile_soft_limit(), settings.pool_max_idle_total)
        # client connections of all proxy listeners together (see _limits)
        self.gate = ConnectionGate(limit)
        self._accept_errors = AcceptErrors()
        self._listening = 0  # proxy listeners serving now (see _proxy_listener)
        self._housekeeper: anyio.Lock | None = None
        # what the source reports for /health (applied_seq, source, ...); see report_status
        self._status: dict[str, Any] = {}
        self._status_changed: anyio.Event | None = None
        #: called with N when a ``wait_for_seq(N)`` finds ``applied_seq`` below N: the source
        #: can look for it now rather than later (a log follower ends its back-off)
        self.on_seq_wanted: Callable[[int], None] | None = None
        if table is not None:
            self.set_table(table)  # generation 1

    def report_status(self, **fields: Any) -> None:
        """Fields the table's source adds to ``/health`` (JSON values): a log-following node
        reports ``applied_seq``, ``source``, ``log_url``... ``/health?min_seq=N`` waits on
        ``applied_seq``. A field set to ``None`` is removed."""
        for key, value in fields.items():
            if value is None:
                self._status.pop(key, None)
            else:
                self._status[key] = value
        changed, self._status_changed = self._status_changed, None
        if changed is not None:
            changed.set()

    @property
    def status(self) -> Mapping[str, Any]:
        return dict(self._status)

    async def wait_for_seq(self, seq: int, seconds: float) -> bool:
        """Wait until the reported ``applied_seq`` is at least ``seq``; False after ``seconds``."""
        wanted = self.on_seq_wanted
        if wanted is not None and int(self._status.get("applied_seq", -1)) < seq:
            wanted(seq)
        with anyio.move_on_after(seconds):
            while int(self._status.get("applied_seq", -1)) < seq:
                if self._status_changed is None:
                    self._status_changed = anyio.Event()
                await self._status_changed.wait()
            return True
        return int(self._status.get("applied_seq", -1)) >= seq

    @property
    def table(self) -> RoutingTable:
        """The routing table now: read it; change it only with :meth:`apply`."""
        return self._table

    def apply(
        self,
        upserts: Iterable[tuple[RouterSpec, ServiceSpec]] = (),
        removals: Iterable[str] = (),
    ) -> list[ConfigProblem]:
        """Remove routers by name, then add or replace routers, as one step (see
        :meth:`RoutingTable.apply`); the problems of routers that could not be installed."""
        upserts = list(upserts)
        removals = list(removals)
        table = self._table
        before: dict[str, Route | None] = {}
        for name in removals:
            if name not in before:
                before[name] = table.route(name)
        for spec, _ in upserts:
            upsert = getattr(spec, "name", None)  # a bad upsert is reported by table.apply
            if isinstance(upsert, str) and upsert not in before:
                before[upsert] = table.route(upsert)
        problems = table.apply(upserts, removals)
        self._changed(before)
        return problems

    def set_table(self, table: RoutingTable) -> None:
        """Make the routing table equal to ``table`` (e.g. a reloaded configuration file).

        Goes through :meth:`apply` with the difference: routers whose rule, priority or service
        did not change are left alone (and keep their activity).
        """
        current = self._table
        old_specs, new_specs = current.routers(), table.routers()
        upserts: list[tuple[RouterSpec, ServiceSpec]] = []
        for name, spec in new_specs.items():
            new = table.route(name)
            assert new is not None
            old = current.route(name)
            if old is None or old_specs[name] != spec or old.service != new.service:
                upserts.append((spec, new.service))
        self.apply(upserts, [name for name in old_specs if name not in new_specs])

    def _changed(self, before: Mapping[str, Route | None]) -> None:
        """Bookkeeping after routers ``before`` (name -> route before the change) changed."""
        table = self._table
        state = self._state
        users = self._users
        gone: list[str] = []
        fresh: list[str] = []
        unused: list[str] = []
        for name, old in before.items():
            new = table.route(name)
            if new is None and old is not None:
                gone.append(name)
                state.round_robin.pop(old.service.name, None)
            old_urls, new_urls = _servers(old), _servers(new)
            if new is not None and (old is None or old_urls != new_urls):
                fresh.append(name)  # activity was another server's
            if old_urls == new_urls:
                continue
            for url in old_urls - new_urls:
                n = users[url] - 1
                if n:
                    users[url] = n
                else:
                    del users[url]
                    unused.append(url)
            for url in new_urls - old_urls:
                users[url] = users.get(url, 0) + 1
        state.metrics.config_generation += 1
        state.activity.forget(gone)
        state.activity.forget(fresh)
        state.metrics.forget(gone)
        if unused:
            state.pool.retire(unused)

    @property
    def generation(self) -> int:
        """How many tables have been installed."""
        return self._state.metrics.config_generation

    def activity(self) -> Mapping[str, datetime]:
        """Router name -> last request or WebSocket traffic (UTC), recorded at most once per
        ``settings.activity_interval`` per router."""
        return self._state.activity.snapshot()

    def metrics_text(self) -> str:
        """The Prometheus text served on ``/metrics``."""
        pool = self._state.pool
        lines = [
            "# HELP eventproxy_dataplane_max_connections Client connections served at once, at "
            "most.",
            "# TYPE eventproxy_dataplane_max_connections gauge",
            f"eventproxy_dataplane_max_connections {self.gate.limit}",
            "# HELP eventproxy_dataplane_connections_refused_total Client connections closed at "
            "once because max_connections were open.",
            "# TYPE eventproxy_dataplane_connections_refused_total counter",
            f"eventproxy_dataplane_connections_refused_total {self.gate.refused}",
            "# HELP eventproxy_dataplane_accept_errors_total Accepts that failed for lack of "
            "descriptors or buffers (retried).",
            "# TYPE eventproxy_dataplane_accept_errors_total counter",
            f"eventproxy_dataplane_accept_errors_total {self._accept_errors.count}",
            "# HELP eventproxy_dataplane_backend_idle_connections Pooled idle backend connections.",
            "# TYPE eventproxy_dataplane_backend_idle_connections gauge",
            f"eventproxy_dataplane_backend_idle_connections {pool.idle_count}",
            "# HELP eventproxy_dataplane_backend_idle_closed_total Idle backend connections "
            "closed, by reason.",
            "# TYPE eventproxy_dataplane_backend_idle_closed_total counter",
            *(
                f'eventproxy_dataplane_backend_idle_closed_total{{reason="{why}"}} {n}'
                for why, n in sorted(pool.closed.items())
            ),
        ]
        return self._state.metrics.render() + "\n".join(lines) + "\n"

    @property
    def pool(self) -> BackendPool:
        """The backend connection pool (read it; the plane manages it)."""
        return self._state.pool

    @property
    def backend_connections_opened(self) -> int:
        """Backend connections opened so far (a measure of pooling)."""
        return self._state.pool.opened

    # -- listeners -------------------------------------------------------------------------

    async def serve_tcp(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve HTTP (or HTTPS with ``ssl_context``) on ``host:port`` until cancelled.

        ``task_status.started`` receives the bound port (useful with ``port=0``).
        """
        self._state.set_clock()
        tls = ssl_context is not None
        if self.settings.io_edge == "auto" and fast_edge_available():
            await self._serve_tcp_fast(host, port, ssl_context, task_status)
            return
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.info("data plane listening on %s:%d%s", host, bound, " (TLS)" if tls else "")
        gate = self.gate

        async def handle(stream: anyio.abc.ByteStream) -> None:
            if not gate.admit():
                await anyio.aclose_forcefully(stream)  # refused before the TLS handshake
                return
            try:
                if ssl_context is not None:
                    try:
                        with anyio.fail_after(_TLS_HANDSHAKE_TIMEOUT):
                            stream = await TLSStream.wrap(
                                stream, ssl_context=ssl_context, standard_compatible=False
                            )
                    except (TimeoutError, ssl.SSLError, OSError, anyio.BrokenResourceError):
                        await anyio.aclose_forcefully(stream)
                        return
                await ClientConnection(
                    self._state, stream, client_ip=_peer_ip(stream), tls=tls
                ).run()
            finally:
                gate.leave()

        await self._serve(listener, handle, task_status, bound)

    async def _serve_tcp_fast(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        task_status: anyio.abc.TaskStatus[int],
    ) -> None:
        async with self._proxy_listener():
            await serve_callback(
                self._state,
                self.gate,
                host,
                port,
                ssl_context=ssl_context,
                task_status=task_status,
                backlog=ACCEPT_BURST,
            )

    async def serve_unix(
        self, path: str, *, task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve HTTP on a Unix socket at ``path`` until cancelled (the socket file is removed).

        On asyncio this always uses an asyncio protocol: anyio's asyncio UNIX socket stream can
        report ``InvalidStateError`` to the loop when a reader is cancelled while the socket
        becomes readable. With ``io_edge="auto"`` that is the callback edge; with ``"anyio"``
        the anyio driver runs over protocol streams (the pool's backend connections are anyio
        streams then, which the callback edge does not drive).
        """
        self._state.set_clock()
        if fast_edge_available():
            state = self._state
            gate = self.gate

            async def handle_fast(stream: FastStream) -> None:
                if not gate.admit():
                    stream.close_now()
                    return
                try:
                    await ClientConnection(state, stream, client_ip=None, tls=False).run()
                finally:
                    gate.leave()

            try:
                async with self._proxy_listener():
                    if self.settings.io_edge == "auto":
                        await serve_callback(
                            state,
                            gate,
                            "",
                            0,
                            unix_path=path,
                            task_status=task_status,
                            backlog=ACCEPT_BURST,
                        )
                    else:
                        await serve_fast(
                            "",
                            0,
                            handle_fast,
                            unix_path=path,
                            task_status=task_status,
                            backlog=ACCEPT_BURST,
                        )
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            return
        listener = await anyio.create_unix_listener(path)
        logger.info("data plane listening on unix:%s", path)

        gate = self.gate

        async def handle(stream: anyio.abc.ByteStream) -> None:
            if not gate.admit():
                await anyio.aclose_forcefully(stream)
                return
            try:
                await ClientConnection(self._state, stream, client_ip=None, tls=False).run()
            finally:
                gate.leave()

        try:
            await self._serve(listener, handle, task_status, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    @contextlib.asynccontextmanager
    async def _proxy_listener(self) -> AsyncIterator[None]:
        """Around one proxy listener's serving: the plane's housekeeping runs once however
        many proxy listeners serve (and goes on while any does), and the backend pool is closed
        when the last one stops. The admin listener takes no part: it neither proxies nor
        owns the pool."""
        if self._housekeeper is None:
            self._housekeeper = anyio.Lock()
        self._listening += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(_housekeeping, self._state, self._housekeeper)
                try:
                    yield
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self._listening -= 1
            if self._listening == 0:
                self._housekeeper = None  # a later serve may run on another event loop
                with anyio.CancelScope(shield=True):
                    await self._state.pool.aclose()

    async def _serve(
        self,
        listener: anyio.abc.Listener[Any],
        handle: Any,
        task_status: anyio.abc.TaskStatus[Any],
        started: object,
        *,
        proxy: bool = True,
    ) -> None:
        """Accept on every socket of ``listener`` (see ``_limits.accept_forever``: running out
        of descriptors neither ends nor spins the loop) and run ``handle`` for each; a
        ``proxy`` listener also keeps the plane's housekeeping going (:meth:`_proxy_listener`)."""
        sockets: list[Any] = (
            list(listener.listeners) if isinstance(listener, MultiListener) else [listener]
        )
        try:
            async with (
                self._proxy_listener() if proxy else contextlib.nullcontext(),
                anyio.create_task_group() as tg,
            ):
                task_status.started(started)
                for one in sockets:
                    tg.start_soon(accept_forever, one, handle, tg, self._accept_errors)
        finally:
            with anyio.CancelScope(shield=True):
                await listener.aclose()

    async def serve_admin(
        self,
        host: str,
        port: int,
        *,
        task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``/health`` (JSON) and ``/metrics`` (Prometheus text) until cancelled."""
        listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
        bound = int(listener.extra(anyio.abc.SocketAttribute.local_port))
        logger.info("data plane admin listening on %s:%d", host, bound)
        await self._serve(listener, self._admin_connection, task_status, bound, proxy=False)

    async def _admin_connection(self, stream: anyio.abc.ByteStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    with anyio.move_on_after(30) as scope:
                        try:
                            data = await stream.receive()
                        except anyio.EndOfStream:
                            data = b""
                    if scope.cancelled_caught:
                        return
                    conn.receive_data(data)
                    continue
                if type(event) is h11.Request:
                    status, content_type, body = await self._admin_answer(event)
                    headers = [
                        (b"content-type", content_type),
                        (b"content-length", b"%d" % len(body)),
                        (b"cache-control", b"no-store"),
                    ]
                    out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
                    if event.method != b"HEAD":
                        out += conn.send(h11.Data(data=body)) or b""
                    await stream.send(out)
                    continue
                if type(event) is h11.EndOfMessage:
                    await stream.send(conn.send(h11.EndOfMessage()) or b"")
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                    continue
                if type(event) is h11.Data:
                    continue
                return
        except (h11.ProtocolError, anyio.BrokenResourceError, OSError):
            return
        finally:
            await anyio.aclose_forcefully(stream)

    async def _admin_answer(self, request: h11.Request) -> tuple[int, bytes, bytes]:
        """``/health?min_seq=N&timeout=S`` long-polls (at most S seconds, 30 at most): 200 once
        ``applied_seq`` >= N, else 504; the body is the same JSON either way."""
        path, _, query = request.target.partition(b"?")
        if path != b"/health" or not query or request.method not in (b"GET", b"HEAD"):
            return self._admin_page(request)
        params = parse_qs(query.decode("latin-1"))
        try:
            min_seq = int(params["min_seq"][0]) if "min_seq" in params else None
            timeout = float(params.get("timeout", ["10"])[0])
            if not 0 <= timeout <= 300:
                raise ValueError(timeout)
        except ValueError:
            return 400, b"text/plain; charset=utf-8", b"min_seq must be an int, timeout 0..300\n"
        if min_seq is None:
            return self._admin_page(request)
        reached = await self.wait_for_seq(min_seq, timeout)
        status, content_type, body = self._admin_page(request)
        return (status if reached else 504), content_type, body

    def _admin_page(self, request: h11.Request) -> tuple[int, bytes, bytes]:
        path = request.target.split(b"?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return 405, b"text/plain; charset=utf-8", b"method not allowed\n"
        if path == b"/health":
            metrics = self._state.metrics
            doc = {
                "status": "ok",
                "generation": metrics.config_generation,
                "in_flight": metrics.in_flight,
                "connections": metrics.connections,
                "host": socket.gethostname(),
                **self._status,
            }
            return 200, b"application/json", json.dumps(doc).encode() + b"\n"
        if path == b"/metrics":
            return 200, b"text/plain; version=0.0.4; charset=utf-8", self.metrics_text().encode()
        if path == b"/activity":  # router -> last activity (ISO 8601, UTC)
            doc = {name: ts.isoformat() for name, ts in self.activity().items()}
            return 200, b"application/json", json.dumps(doc).encode() + b"\n"
        if path == b"/routes":  # the routing table as it is installed (for `eventproxy verify`)
            return 200, b"application/json", json.dumps(self.routes_document()).encode() + b"\n"
        return (
            404,
            b"text/plain; charset=utf-8",
            b"not found: try /health, /metrics, /activity or /routes\n",
        )

    def routes_document(self) -> dict[str, Any]:
        """``GET /routes`` (read-only): every installed router -- rule, service, priority and
        the service's server URLs, credentials in a URL replaced by ``***`` -- with the
        ``applied_seq`` and ``generation`` it belongs to."""
        table = self._table
        routers: dict[str, Any] = {}
        for name, spec in table.routers().items():
            route = table.route(name)
            servers = [_without_userinfo(s.url) for s in route.service.servers] if route else []
            routers[name] = {
                "rule": spec.rule,
                "service": spec.service,
                "priority": spec.priority,
                "servers": servers,
            }
        return {
            "applied_seq": self._status.get("applied_seq"),
            "generation": self._state.metrics.config_generation,
            "routers": routers,
        }
