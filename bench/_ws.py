"""WebSocket round-trip latency: a blocking-socket wsproto client against an echo backend.

One connection, upgraded through whatever proxy sits in front of the echo server; then ``count``
round trips (send a small binary message, wait for its echo), each timed with
``perf_counter_ns``. ``warmup`` round trips are made first and not recorded. Bounded by
``count`` and by a per-receive socket timeout.
"""

from __future__ import annotations

import contextlib
import math
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    RejectConnection,
    Request,
)


class WebSocketError(RuntimeError):
    """The upgrade was refused, the connection dropped, or the echo was wrong."""


@dataclass(frozen=True)
class RoundTrips:
    count: int
    p50_us: float
    p90_us: float
    p99_us: float
    mean_us: float
    max_us: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending, non-empty list."""
    if not sorted_values:
        raise ValueError("percentile of an empty sample")
    rank = max(1, math.ceil(len(sorted_values) * pct / 100))
    return sorted_values[min(len(sorted_values), rank) - 1]


class EchoClient:
    def __init__(self, port: int, path: str, *, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host=f"127.0.0.1:{port}", target=path)))
        for event in self._events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                self.sock.close()
                raise WebSocketError(f"upgrade of {path!r} refused with HTTP {event.status_code}")
        raise AssertionError("unreachable")

    def _events(self) -> Iterator[Event]:
        while True:
            yield from self.ws.events()
            data = self.sock.recv(65536)
            if not data:
                raise WebSocketError("connection closed by peer")
            self.ws.receive_data(data)

    def round_trip(self, payload: bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data=payload)))
        got = bytearray()
        for event in self._events():
            if isinstance(event, BytesMessage):
                got += event.data
                if event.message_finished:
                    break
            elif isinstance(event, CloseConnection):
                raise WebSocketError(f"closed by peer: {event.code} {event.reason!r}")
        if bytes(got) != payload:
            raise WebSocketError(f"echo mismatch: sent {len(payload)} bytes, got {len(got)}")

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the measurement is done; best effort
            self.sock.sendall(self.ws.send(CloseConnection(code=1000)))
        self.sock.close()


def round_trip_samples(
    port: int, path: str, *, count: int = 2000, warmup: int = 100, size: int = 32
) -> list[float]:
    """``count`` echo round-trip times (µs) on one new connection through 127.0.0.1:``port``."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    client = EchoClient(port, path)
    try:
        for _ in range(warmup):
            client.round_trip(payload)
        samples: list[float] = []
        for _ in range(count):
            start = time.perf_counter_ns()
            client.round_trip(payload)
            samples.append((time.perf_counter_ns() - start) / 1000)
    finally:
        client.close()
    return samples


def summarize_round_trips(samples: list[float]) -> RoundTrips:
    ordered = sorted(samples)
    return RoundTrips(
        count=len(ordered),
        p50_us=round(percentile(ordered, 50), 1),
        p90_us=round(percentile(ordered, 90), 1),
        p99_us=round(percentile(ordered, 99), 1),
        mean_us=round(sum(ordered) / len(ordered), 1),
        max_us=round(ordered[-1], 1),
    )


def measure_round_trips(
    port: int, path: str, *, count: int = 2000, warmup: int = 100, size: int = 32
) -> RoundTrips:
    """Median/p90/p99 round-trip time of ``count`` echoes through 127.0.0.1:``port``."""
    return summarize_round_trips(
        round_trip_samples(port, path, count=count, warmup=warmup, size=size)
    )
