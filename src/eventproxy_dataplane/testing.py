"""A mock edge for the connection core: scripted bytes in, recorded actions out, no sockets.

:class:`MockEdge` drives one :class:`~eventproxy_dataplane._core.ClientCore` the way a real
edge does, synchronously: it executes each action the core returns (``SendClient`` bytes go to
``client_received``, ``SendBackend`` bytes to the current :class:`MockBackend`'s ``received``,
``AcquireBackend`` hands out a backend at once, pooled ones first), keeps a fake clock, and
records every action in ``actions``. A test scripts the two peers::

    edge = MockEdge({"/": "http://backend:8000"})
    edge.client(b"GET /a HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
    assert edge.backend.received.startswith(b"GET /a HTTP/1.1\\r\\n")
    edge.reply(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nhi")
    assert edge.client_received.endswith(b"\\r\\n\\r\\nhi")

Failures are scripted too: ``acquire_errors`` (errors the next acquires raise, in order),
``error_pages`` (what ``FetchErrorPage`` answers; ``None``: the fetch fails), ``advance(s)``
(moves the clock, and fires the deadline when it passes), ``backend_reset()``,
``client_reset()``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ._backend import ServerAddress
from ._config import RouterSpec, ServerSpec, ServiceSpec
from ._core import (
    AcquireBackend,
    Action,
    ClientCore,
    CloseClient,
    CoreContext,
    FetchErrorPage,
    RelayWebSocket,
    ReleaseBackend,
    SendBackend,
    SendClient,
    TableLike,
)
from ._errors import BackendError, BackendProtocolError
from ._http import ResponseParser, parser_classes
from ._routing import RoutingTable
from ._settings import ProxySettings


@dataclass(eq=False)
class MockBackend:
    """One scripted backend connection."""

    url: str
    parser: ResponseParser
    received: bytearray = field(default_factory=bytearray)
    released: bool | None = None  # None: held; True: pooled; False: closed
    relayed: bool = False  # handed to the WebSocket relay


def table_of(routes: Mapping[str, str]) -> RoutingTable:
    """A routing table with one ``PathPrefix`` router per ``prefix -> server URL``."""
    table = RoutingTable()
    upserts = []
    for n, (prefix, url) in enumerate(routes.items()):
        name = f"r{n}"
        upserts.append(
            (
                RouterSpec(name=name, rule=f"PathPrefix(`{prefix}`)", service=name),
                ServiceSpec(name=name, servers=(ServerSpec(url=url),)),
            )
        )
    problems = table.apply(upserts, [])
    if problems:
        raise ValueError(f"bad routes: {problems}")
    return table


class MockEdge:
    """Drives one connection core with scripted bytes; see the module docstring."""

    def __init__(
        self,
        routes: Mapping[str, str] | TableLike,
        settings: ProxySettings | None = None,
        *,
        client_ip: bytes | None = b"127.0.0.1",
        tls: bool = False,
        context: CoreContext | None = None,
    ) -> None:
        settings = settings if settings is not None else ProxySettings(parser="h11")
        table: TableLike = table_of(routes) if isinstance(routes, Mapping) else routes
        self.now = 0.0
        if context is None:
            context = CoreContext(table, settings, address=ServerAddress.parse, clock=self.clock)
        self.context = context
        self.settings = context.settings
        self.new_parser = parser_classes(self.settings.parser)[1]
        self.core = ClientCore(context, client_ip=client_ip, tls=tls)
        self.actions: list[Action] = []
        self.client_received = bytearray()
        self.client_closed = False
        self.backends: list[MockBackend] = []
        self.backend: MockBackend | None = None  # the one the core holds
        self.pool: dict[str, list[MockBackend]] = {}
        self.acquire_errors: list[BackendError] = []
        self.acquired: list[tuple[str, bool]] = []  # (url, reused) per acquire
        self.error_pages: dict[str, tuple[bytes, bytes] | None] = {}
        self.fetched: list[str] = []
        self.relay: RelayWebSocket | None = None
        self._run(self.core.start())

    def clock(self) -> float:
        return self.now

    # -- scripting -------------------------------------------------------------------------

    def client(self, data: bytes) -> bytes:
        """The client sends ``data`` (``b""``: EOF); what the client received from it."""
        before = len(self.client_received)
        self._run(self.core.client_data(data))
        return bytes(self.client_received[before:])

    def reply(self, data: bytes) -> bytes:
        """The held backend sends ``data`` (``b""``: it closes); what the client received."""
        before = len(self.client_received)
        self._run(self.core.backend_data(data))
        return bytes(self.client_received[before:])

    def backend_reset(self) -> None:
        """The held backend connection fails."""
        self._run(self.core.backend_failed(BackendProtocolError("reset (scripted)")))

    def client_reset(self) -> None:
        self._run(self.core.client_failed())

    def advance(self, seconds: float) -> None:
        """Move the clock; fire the core's deadline if it passed."""
        self.now += seconds
        if self.core.deadline <= self.now:
            self._run(self.core.deadline_passed())

    def close(self) -> None:
        """The edge is done with the connection."""
        self.core.closed()

    # -- executing actions -----------------------------------------------------------------

    def _run(self, actions: list[Action]) -> None:
        queue = list(actions)
        while queue:
            action = queue.pop(0)
            self.actions.append(action)
            queue.extend(self._execute(action))

    def _execute(self, action: Action) -> list[Action]:
        core = self.core
        if type(action) is SendClient:
            if self.client_closed:
                raise AssertionError("the core wrote to a closed client")
            self.client_received += action.data
        elif type(action) is SendBackend:
            if self.backend is None:
                raise AssertionError("the core wrote to a backend it does not hold")
            self.backend.received += action.data
        elif type(action) is AcquireBackend:
            if self.backend is not None:
                raise AssertionError("the core acquired a second backend")
            if self.acquire_errors:
                return core.backend_unavailable(self.acquire_errors.pop(0))
            stack = self.pool.get(action.url)
            reused = bool(stack)
            if stack:
                conn = stack.pop()
                conn.released = None
                conn.parser.start_next_cycle()
            else:
                conn = MockBackend(action.url, self.new_parser(self.settings.max_header_bytes))
                self.backends.append(conn)
            self.acquired.append((action.url, reused))
            self.backend = conn
            return core.backend_acquired(conn.parser, reused)
        elif type(action) is ReleaseBackend:
            conn2 = self.backend
            if conn2 is None:
                raise AssertionError("the core released a backend it does not hold")
            self.backend = None
            conn2.released = action.reusable
            if action.reusable:
                self.pool.setdefault(conn2.url, []).append(conn2)
        elif type(action) is FetchErrorPage:
            self.fetched.append(action.url)
            page = self.error_pages.get(action.url.split("?", 1)[0])
            if page is None:
                return core.error_page(None, None)
            return core.error_page(page[0], page[1])
        elif type(action) is RelayWebSocket:
            if self.backend is None:
                raise AssertionError("a relay without a backend")
            self.backend.relayed = True
            self.backend = None
            self.relay = action
        elif type(action) is CloseClient:
            self.client_closed = True
        return []


__all__ = ["MockBackend", "MockEdge", "table_of"]
