"""The soak benchmark's workload: a busy hub's route churn, HTTP and WebSocket traffic.

One :class:`Workload` drives one proxy through a :class:`RouteControl` (how its routes change:
EventProxy's API in the stand-in hub, appends to the log a node follows, or CHP's REST API):

* ``routes`` user routes ``/user/slotNNNN/``, each to its own backend port (one server per user);
* churn: ``changes_per_s`` route changes; a change pair is a user's server restarting: the route
  is deleted, then added again to a *new* port (the old port is put back at the end of the spare
  list, so ports are reused, as the kernel reuses them);
* ``http_per_s`` GETs to random live routes over kept-alive client connections;
* ``ws_per_s`` WebSocket connects, in turn: a clean session (echo one message, close
  handshake), an abrupt drop (echo, then a TCP reset), and an upgrade to a route whose server is
  stopped (nothing listens: a 502/503 answer, after which the proxy should close).

Every answer is checked. A request that raced a change of its own route (its route was being
deleted or re-added while the request was under way) is counted as ``raced``, not as an error;
everything else that is not the expected answer is an error, with the first few kept verbatim.
Loops are bounded in time (the caller's duration) and every network wait in time (10 s).
Loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

LOOPBACK = "127.0.0.1"
TIMEOUT = 10.0
_MAX_KEPT = 64  # kept-alive client connections per workload
_MAX_IN_FLIGHT = 128  # jobs (requests, WebSocket sessions, changes) running at once per workload


class RouteControl(Protocol):
    """How a workload changes its proxy's routes."""

    grace: float  # seconds after an acknowledged add before the route is used

    async def add(self, slot_spec: str, target: str) -> None: ...

    async def delete(self, slot_spec: str) -> None: ...


@dataclass
class Counts:
    http_ok: int = 0
    http_raced: int = 0
    http_late: int = 0
    http_retried: int = 0
    ws_clean: int = 0
    ws_abrupt: int = 0
    ws_stopped: int = 0
    ws_stopped_closed_by_proxy: int = 0
    ws_raced: int = 0
    changes: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 20:
            self.error_samples.append(what[:300])


def slot_spec(slot: int) -> str:
    return f"/user/slot{slot:04d}/"


@dataclass
class Response:
    status: int
    close: bool
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> Response:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and "close" in value.lower():
            close = True
        elif name == "transfer-encoding" and "chunked" in value.lower():
            length = -1
    if length >= 0:
        body = await reader.readexactly(length) if length else b""
        return Response(status, close, body)
    parts = []
    while True:  # chunked (configurable-http-proxy's own error pages)
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from our backends
            return Response(status, close, b"".join(parts))
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    header = struct.pack("!BB", 0x80 | opcode, 0x80 | n)  # payloads here are < 126 bytes
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    return b0 & 0x0F, await reader.readexactly(n)


class Workload:
    def __init__(
        self,
        name: str,
        port: int,
        control: RouteControl,
        ports: list[int],
        stopped_port: int,
        *,
        routes: int,
        changes_per_s: float,
        http_per_s: float,
        ws_per_s: float,
        stopped_routes: int = 5,
        seed: int = 1,
    ) -> None:
        if len(ports) <= routes:
            raise ValueError(f"need more backend ports ({len(ports)}) than routes ({routes})")
        self.name = name
        self.port = port
        self.control = control
        self.routes = routes
        self.changes_per_s = changes_per_s
        self.http_per_s = http_per_s
        self.ws_per_s = ws_per_s
        self.stopped_port = stopped_port
        self.stopped_routes = stopped_routes
        self.rng = random.Random(seed)
        self.counts = Counts()
        self.port_of: dict[int, int] = {}
        self.spare: deque[int] = deque(ports[routes:])
        self._initial = ports[:routes]
        self.live: list[int] = []  # slots whose route is acknowledged (and past the grace)
        self._live_index: dict[int, int] = {}
        self.version: dict[int, int] = {}
        self._kept: deque[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.change_seconds: list[float] = []  # how long each acknowledged route change took

    # -- live set (O(1) add, remove and random pick) -------------------------------------
    def _add_live(self, slot: int) -> None:
        self._live_index[slot] = len(self.live)
        self.live.append(slot)

    def _remove_live(self, slot: int) -> None:
        i = self._live_index.pop(slot)
        last = self.live.pop()
        if last != slot:
            self.live[i] = last
            self._live_index[last] = i

    # -- setup ----------------------------------------------------------------------------
    async def setup(self, precondition: int = 0) -> None:
        """Add the routes; then ``precondition`` route changes (servers restarting, 32 at a
        time, no traffic), so that the log has compacted a few times before the run: a hub's
        log in its steady state (a snapshot of the live routes and a bounded tail), as after
        hours of use, not a fresh one. The counts start after it."""
        sem = asyncio.Semaphore(32)

        async def add(spec: str, port: int) -> None:
            async with sem:
                await self.control.add(spec, f"http://{LOOPBACK}:{port}")

        jobs = []
        for slot, port in enumerate(self._initial):
            self.port_of[slot] = port
            self.version[slot] = 0
            jobs.append(add(slot_spec(slot), port))
        for k in range(self.stopped_routes):
            jobs.append(add(f"/user/stopped{k}/", self.stopped_port))
        await asyncio.gather(*jobs)
        if self.control.grace:
            await asyncio.sleep(self.control.grace)
        for slot in range(self.routes):
            self._add_live(slot)

        async def restart(n: int) -> None:
            async with sem:
                await self._restart(n)

        await asyncio.gather(*(restart(n) for n in range(precondition)))
        self.counts = Counts()
        self.change_seconds.clear()

    # -- the run --------------------------------------------------------------------------
    async def run(self, duration: float) -> None:
        """Drive the workload for ``duration`` seconds, then wait for what is in flight."""
        # the kept-alive client connections are opened up front (a browser's are open before
        # it sends), so the proxy's count of client sockets does not ramp up during the run
        while len(self._kept) < _MAX_KEPT:
            self._kept.append(
                await asyncio.wait_for(asyncio.open_connection(LOOPBACK, self.port), TIMEOUT)
            )
        deadline = time.monotonic() + duration
        await asyncio.gather(
            self._ticker(self.changes_per_s / 2, deadline, self._restart),
            self._ticker(self.http_per_s, deadline, self._http),
            self._ticker(self.ws_per_s, deadline, self._websocket),
        )
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=3 * TIMEOUT)
        for _, writer in self._kept:
            writer.close()
        self._kept.clear()

    async def _ticker(
        self, rate: float, deadline: float, job: Callable[[int], Awaitable[None]]
    ) -> None:
        """Start ``job`` ``rate`` times a second until ``deadline``. Never in bursts: a tick more
        than 0.5 s late, or one that finds ``_MAX_IN_FLIGHT`` jobs still running, is skipped
        and counted (``driver_skipped``), so the offered load stays the one asked for."""
        if rate <= 0:
            return
        start = time.monotonic()
        n = 0
        while True:
            at = start + n / rate
            if at >= deadline:
                return
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if delay < -0.5 or len(self._tasks) >= _MAX_IN_FLIGHT:
                self.counts.http_late += 1  # the driver (or the proxy) fell behind
                n += 1
                continue
            task = asyncio.ensure_future(self._guard(job, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1

    async def _guard(self, job: Callable[[int], Awaitable[None]], n: int) -> None:
        try:
            await asyncio.wait_for(job(n), 3 * TIMEOUT)
        except Exception as exc:
            self.counts.error(f"{job.__name__}: {type(exc).__name__}: {exc}")

    # -- route churn ----------------------------------------------------------------------
    async def _restart(self, n: int) -> None:
        """A user's server restarts: its route goes, and comes back to a new port."""
        if not self.live:
            return
        slot = self.live[self.rng.randrange(len(self.live))]
        self._remove_live(slot)
        self.version[slot] += 1
        spec = slot_spec(slot)
        began = time.monotonic()
        await self.control.delete(spec)
        self.change_seconds.append(time.monotonic() - began)
        self.counts.changes += 1
        self.spare.append(self.port_of[slot])
        port = self.port_of[slot] = self.spare.popleft()
        began = time.monotonic()
        await self.control.add(spec, f"http://{LOOPBACK}:{port}")
        self.change_seconds.append(time.monotonic() - began)
        self.counts.changes += 1
        if self.control.grace:
            await asyncio.sleep(self.control.grace)
        self.version[slot] += 1
        self._add_live(slot)

    # -- HTTP -----------------------------------------------------------------------------
    async def _connection(
        self, *, fresh: bool = False
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """A kept-alive client connection (reused: True) or a new one."""
        if self._kept and not fresh:
            # the oldest first: every kept connection is reused in turn, so none sits idle
            # until the proxy's client idle timeout closes it (which would make the proxy's
            # count of client sockets drift over minutes, and read as an fd trend)
            reader, writer = self._kept.popleft()
            return reader, writer, True
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.port), TIMEOUT
        )
        return reader, writer, False

    async def _http(self, n: int) -> None:
        if not self.live:
            return
        slot = self.live[self.rng.randrange(len(self.live))]
        version = self.version[slot]
        request = f"GET {slot_spec(slot)}api/status HTTP/1.1\r\nHost: soak.test\r\n\r\n".encode()
        reader, writer, reused = await self._connection()
        try:
            writer.write(request)
            response = await asyncio.wait_for(read_response(reader), TIMEOUT)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            if not reused:
                raise
            # the proxy closed this idle kept-alive connection just before we reused it (node's
            # server does after 5 s): a browser retries a GET on a new connection; so do we
            self.counts.http_retried += 1
            reader, writer, _ = await self._connection(fresh=True)
            try:
                writer.write(request)
                response = await asyncio.wait_for(read_response(reader), TIMEOUT)
            except BaseException:
                writer.close()
                raise
        except BaseException:
            writer.close()
            raise
        if response.close or len(self._kept) >= _MAX_KEPT:
            writer.close()
        else:
            self._kept.append((reader, writer))
        if response.status == 200:
            self.counts.http_ok += 1
        elif self.version[slot] != version:
            self.counts.http_raced += 1
        else:
            self.counts.error(f"GET {slot_spec(slot)}: {response.status} {response.body[:80]!r}")

    # -- WebSocket ------------------------------------------------------------------------
    async def _websocket(self, n: int) -> None:
        kind = ("clean", "abrupt", "stopped")[n % 3]
        if kind == "stopped":
            path = f"/user/stopped{n % self.stopped_routes}/api/kernels/k/channels"
            slot, version = -1, 0
        else:
            if not self.live:
                return
            slot = self.live[self.rng.randrange(len(self.live))]
            version = self.version[slot]
            path = f"{slot_spec(slot)}api/kernels/k/channels"
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(LOOPBACK, self.port), TIMEOUT
        )
        try:
            await self._ws_session(kind, path, reader, writer, slot, version)
        finally:
            writer.close()

    async def _ws_session(
        self,
        kind: str,
        path: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        slot: int,
        version: int,
    ) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: soak.test\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        if kind == "stopped":
            response = await asyncio.wait_for(read_response(reader), TIMEOUT)
            if response.status not in (502, 503):
                self.counts.error(f"upgrade to a stopped server: {response.status}")
                return
            self.counts.ws_stopped += 1
            with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
                if await asyncio.wait_for(reader.read(1), 2.0) == b"":
                    self.counts.ws_stopped_closed_by_proxy += 1
            return
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            if self.version[slot] != version:
                self.counts.ws_raced += 1
            else:
                self.counts.error(f"WebSocket upgrade {path}: {status}")
            return
        message = json.dumps({"n": slot}).encode()
        writer.write(_client_frame(0x1, message))
        opcode, payload = await asyncio.wait_for(_read_frame(reader), TIMEOUT)
        if (opcode, payload) != (0x1, message):
            self.counts.error(f"WebSocket echo {path}: {opcode} {payload[:60]!r}")
            return
        if kind == "clean":
            writer.write(_client_frame(0x8, struct.pack("!H", 1000)))
            opcode, _ = await asyncio.wait_for(_read_frame(reader), TIMEOUT)
            if opcode != 0x8:
                self.counts.error(f"WebSocket close {path}: opcode {opcode}")
                return
            self.counts.ws_clean += 1
        else:
            sock = writer.get_extra_info("socket")
            if sock is not None:  # a reset, not a FIN: the client vanished
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.counts.ws_abrupt += 1

    def summary(self) -> dict[str, Any]:
        """Counts, the route-change latency (p50/p99/max), errors and the first few verbatim."""
        c = self.counts
        return {
            "http_ok": c.http_ok,
            "http_raced": c.http_raced,
            "driver_skipped": c.http_late,
            "http_retried_after_proxy_closed_idle": c.http_retried,
            "ws_clean": c.ws_clean,
            "ws_abrupt": c.ws_abrupt,
            "ws_stopped": c.ws_stopped,
            "ws_stopped_closed_by_proxy": c.ws_stopped_closed_by_proxy,
            "ws_raced": c.ws_raced,
            "route_changes": c.changes,
            "change_latency_s": _quantiles(self.change_seconds),
            "errors": c.errors,
            "error_samples": c.error_samples,
        }


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 4)

    return {"p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 4)}
