"""last_activity from traefik's Prometheus text: parsing, deltas per replica, merging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from eventproxy.traefik import name_for
from eventproxy.traefik_activity import ActivityTracker, router_request_totals

A = name_for("/user/a/")
B = name_for("/user/b/")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _line(router: str, value: int, code: str = "200", protocol: str = "http") -> str:
    labels = (
        f'code="{code}",method="GET",protocol="{protocol}",router="{router}",service="{router}"'
    )
    return f"traefik_router_requests_total{{{labels}}} {value}"


def metrics(a: int, b: int, ws: int = 0) -> str:
    return "\n".join(
        [
            "# HELP traefik_router_requests_total How many HTTP requests...",
            "# TYPE traefik_router_requests_total counter",
            _line(f"{A}@file", a),
            _line(f"{A}@file", 1, code="404"),
            _line(f"{A}@file", ws, code="0", protocol="websocket"),
            _line(f"{B}@etcd", b),
            _line("other@file", 9),
            f'traefik_router_request_duration_seconds_count{{router="{A}@file"}} 99',
            'traefik_open_connections{entrypoint="web",protocol="TCP"} 3',
        ]
    )


def test_totals_sum_every_counter_of_a_router() -> None:
    totals = router_request_totals(metrics(5, 2, ws=1))
    assert totals == {A: 7.0, B: 2.0, "other": 9.0}


def test_activity_is_a_counter_moving_between_scrapes() -> None:
    t = ActivityTracker()
    t.observe("r1", router_request_totals(metrics(5, 2)), T0, baseline=True)
    assert t.last_activity == {}  # a replica running before us: its counters say nothing of when
    t.observe("r1", router_request_totals(metrics(5, 2)), T0 + timedelta(seconds=10))
    assert t.last_activity == {}  # no traffic, no activity
    t.observe("r1", router_request_totals(metrics(6, 2)), T0 + timedelta(seconds=20))
    assert t.last_activity == {"/user/a/": T0 + timedelta(seconds=20)}
    # a WebSocket is counted when it closes
    t.observe("r1", router_request_totals(metrics(6, 2, ws=1)), T0 + timedelta(seconds=30))
    assert t.last_activity["/user/a/"] == T0 + timedelta(seconds=30)


def test_replicas_are_merged_and_a_restart_counts() -> None:
    t = ActivityTracker()
    t.observe("r1", router_request_totals(metrics(5, 2)), T0, baseline=True)
    # started by us: counted from zero (its one 404 for /user/a/ is traffic since its start)
    t.observe("r2", router_request_totals(metrics(0, 0)), T0)
    t.observe("r2", router_request_totals(metrics(0, 3)), T0 + timedelta(seconds=5))
    t.observe("r1", router_request_totals(metrics(5, 2)), T0 + timedelta(seconds=6))
    assert t.last_activity == {"/user/a/": T0, "/user/b/": T0 + timedelta(seconds=5)}
    t.observe("r1", router_request_totals(metrics(1, 2)), T0 + timedelta(seconds=7))  # restarted
    assert t.last_activity["/user/a/"] == T0 + timedelta(seconds=7)
    t.observe("r2", router_request_totals(metrics(0, 4)), T0 + timedelta(seconds=4))  # older scrape
    assert t.last_activity["/user/b/"] == T0 + timedelta(seconds=5)  # the latest time wins
