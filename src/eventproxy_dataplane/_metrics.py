"""Counters of the data plane, rendered in the Prometheus text exposition format."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Mutable counters, updated from the event loop only (no locking needed)."""

    __slots__ = (
        "_error_kinds",
        "backend_errors",
        "config_generation",
        "connections",
        "in_flight",
        "requests",
    )

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.backend_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.in_flight = 0
        self.connections = 0
        self.config_generation = 0
        self._error_kinds: set[str] = set()  # every kind seen (a handful), for forget()

    def count_response(self, router: str, status: int) -> None:
        self.requests[(router, status // 100)] += 1

    def count_backend_error(self, router: str, kind: str) -> None:
        self.backend_errors[(router, kind)] += 1
        self._error_kinds.add(kind)

    def forget(self, routers: Iterable[str]) -> None:
        """Drop the counters of ``routers`` (they were removed: their series end)."""
        requests, errors = self.requests, self.backend_errors
        for router in routers:
            for cls in range(10):  # status // 100 of any three-digit status
                requests.pop((router, cls), None)
            for kind in self._error_kinds:
                errors.pop((router, kind), None)

    def routers(self) -> set[str]:
        """Routers that have counters (for tests and leak checks)."""
        return {r for r, _ in self.requests} | {r for r, _ in self.backend_errors}

    def render(self) -> str:
        out = [
            "# HELP eventproxy_dataplane_requests_total Responses sent by router and status class.",
            "# TYPE eventproxy_dataplane_requests_total counter",
        ]
        for (router, cls), n in sorted(self.requests.items()):
            name = _CLASSES[cls - 1] if 1 <= cls <= 5 else "other"
            out.append(
                f'eventproxy_dataplane_requests_total{{router="{_label(router)}",'
                f'code="{name}"}} {n}'
            )
        out += [
            "# HELP eventproxy_dataplane_backend_errors_total Backend failures by router and kind.",
            "# TYPE eventproxy_dataplane_backend_errors_total counter",
        ]
        for (router, kind), n in sorted(self.backend_errors.items()):
            out.append(
                f'eventproxy_dataplane_backend_errors_total{{router="{_label(router)}",'
                f'kind="{_label(kind)}"}} {n}'
            )
        out += [
            "# HELP eventproxy_dataplane_in_flight_requests Requests being proxied now.",
            "# TYPE eventproxy_dataplane_in_flight_requests gauge",
            f"eventproxy_dataplane_in_flight_requests {self.in_flight}",
            "# HELP eventproxy_dataplane_open_connections Client connections open now.",
            "# TYPE eventproxy_dataplane_open_connections gauge",
            f"eventproxy_dataplane_open_connections {self.connections}",
            "# HELP eventproxy_dataplane_config_generation Routing tables installed so far.",
            "# TYPE eventproxy_dataplane_config_generation gauge",
            f"eventproxy_dataplane_config_generation {self.config_generation}",
        ]
        return "\n".join(out) + "\n"
