"""``last_activity`` from traefik's Prometheus metrics. Pure: metrics text in, timestamps out.

traefik 3.7 (with ``metrics.prometheus.addRoutersLabels``) counts requests per router in
``traefik_router_requests_total{router="<name>@<provider>",code,method,protocol}``; WebSocket
upgrades are counted there too, with ``protocol="websocket"``. A route had activity between two
scrapes of a replica when the sum of its router's counters grew; the activity time is the
scrape's time (so the precision is the scrape interval). Replicas are tracked separately
(their counters are independent, and one restarting resets only its own) and merged by taking
the latest time. A counter that went down means the replica restarted: its new value is
counted as traffic since the restart.

traefik 3.7 has no per-router gauge of open connections (``traefik_open_connections`` is per
entrypoint and protocol only), and a router's counters move when a request *ends*: a WebSocket
that stays open for hours shows up when it closes. JupyterHub's single-user servers report
their own activity (kernels, terminals) to the hub, which is what keeps a user with a busy
kernel from being culled; the proxy's activity adds the HTTP traffic.
"""

from __future__ import annotations

import re
from datetime import datetime

from .traefik import routespec_from_name

__all__ = ["ActivityTracker", "router_request_totals"]

_LINE = re.compile(r"^traefik_router_requests_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_ROUTER = re.compile(r'(?:^|,)router="(?P<router>[^"]*)"')


def router_request_totals(text: str) -> dict[str, float]:
    """Per router name (without ``@provider``): the sum of its request counters."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("traefik_router_requests_total{"):
            continue
        match = _LINE.match(line)
        if match is None:
            continue
        router = _ROUTER.search(match.group("labels"))
        if router is None:
            continue
        try:
            value = float(match.group("value"))
        except ValueError:
            continue
        name = router.group("router").rsplit("@", 1)[0]
        totals[name] = totals.get(name, 0.0) + value
    return totals


class ActivityTracker:
    """Last activity per routespec, merged over replicas."""

    def __init__(self) -> None:
        self._previous: dict[str, dict[str, float]] = {}  # replica -> router -> total
        self.last_activity: dict[str, datetime] = {}

    def observe(
        self, replica: str, totals: dict[str, float], when: datetime, *, baseline: bool = False
    ) -> None:
        """One scrape of ``replica`` at ``when``. ``baseline``: the first scrape of a replica
        that was running before us (its counters say nothing about *when*)."""
        before = self._previous.get(replica)
        self._previous[replica] = totals
        if before is None and baseline:
            return
        before = before or {}
        for name, total in totals.items():
            old = before.get(name, 0.0)
            if total > old or (total < old and total > 0):
                spec = routespec_from_name(name)
                if spec is None:
                    continue
                last = self.last_activity.get(spec)
                if last is None or when > last:
                    self.last_activity[spec] = when

    def forget(self, routespec: str) -> None:
        self.last_activity.pop(routespec, None)
