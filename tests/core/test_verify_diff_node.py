"""``diff_node`` (pure): a node's ``/health`` + ``/routes`` against the log's table."""

from __future__ import annotations

from typing import Any

from eventproxy.table import RouteEntry, RouteTable
from eventproxy.traefik import name_for
from eventproxy.verify import _node_router, diff_node


def _table(**targets: str) -> RouteTable:
    entries = {
        f"/user/{u}/": RouteEntry.create(f"/user/{u}/", t, {}, i)
        for i, (u, t) in enumerate(targets.items(), 1)
    }
    return RouteTable(entries, len(entries))


def _routes(table: RouteTable) -> dict[str, Any]:
    return {"routers": {name_for(e.routespec): _node_router(e) for e in table.values()}}


def test_in_sync_and_foreign_routers_ignored() -> None:
    table = _table(a="http://127.0.0.1:1", b="http://127.0.0.1:2")
    routes = _routes(table)
    routes["routers"]["dashboard"] = {"rule": "PathPrefix(`/d`)", "service": "x"}  # not ours
    assert diff_node({"applied_seq": 2}, routes, table) == []


def test_each_kind_of_difference() -> None:
    table = _table(a="http://127.0.0.1:1", b="http://127.0.0.1:2")
    node = _table(b="http://127.0.0.1:9", c="http://127.0.0.1:3")
    found = {(d.kind, d.where) for d in diff_node({"applied_seq": 7}, _routes(node), table)}
    assert found == {
        ("seq", "applied_seq"),
        ("missing", name_for("/user/a/")),
        ("changed", name_for("/user/b/")),
        ("stale", name_for("/user/c/")),
    }


def test_a_changed_rule_or_priority_is_found() -> None:
    table = _table(a="http://127.0.0.1:1")
    routes = _routes(table)
    routes["routers"][name_for("/user/a/")]["priority"] = 1
    (diff,) = diff_node({"applied_seq": 1}, routes, table)
    assert diff.kind == "changed" and diff.as_json()["routespec"] == "/user/a/"


def test_credentials_compare_redacted() -> None:
    table = _table(a="http://u:pw@127.0.0.1:1")
    routes = {"routers": {name_for("/user/a/"): {**_node_router(table["/user/a/"])}}}
    assert routes["routers"][name_for("/user/a/")]["servers"] == ["http://***@127.0.0.1:1"]
    assert diff_node({"applied_seq": 1}, routes, table) == []


def test_no_routes_endpoint_is_a_difference() -> None:
    table = _table(a="http://127.0.0.1:1")
    kinds = [d.kind for d in diff_node({"applied_seq": 1}, None, table)]
    assert kinds == ["unreadable"]
