"""Comparing a projection with the fold of the log. Pure: what the projection holds and the
table in, a list of differences out (``eventproxy verify`` prints them).

Targets: traefik's KV layout (every eventproxy key under the root: missing, changed, stale),
a traefik file-provider file (every eventproxy router: missing, changed, stale; the applied
seq; a file that is not TOML), and a data-plane node (its applied seq from ``/health``, and
every eventproxy router it has installed, from ``/routes``: missing, changed, stale).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .log import redact_url
from .projection import plane_entry
from .projectors.traefik_config import (
    MARKER,
    dynamic_document,
    kv_pairs,
    parse_toml_document,
)
from .table import RouteEntry, RouteTable
from .traefik import NAME_PREFIX, name_for, routespec_from_name

__all__ = ["Difference", "diff_file", "diff_kv", "diff_node"]


@dataclass(frozen=True, slots=True)
class Difference:
    kind: str  # "missing" | "changed" | "stale" | "seq" | "unreadable" | "routes"
    where: str  # a key, a router name, "applied_seq", ...
    expected: Any = None
    actual: Any = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        spec = routespec_from_name(self.where.split("/")[3]) if self.where.count("/") >= 3 else None
        if spec is None:
            spec = routespec_from_name(self.where)
        if spec is not None:
            out["routespec"] = spec
        return out

    def line(self) -> str:
        if self.kind == "missing":
            return f"missing  {self.where}  (expected {self.expected!r})"
        if self.kind == "stale":
            return f"stale    {self.where}  (holds {self.actual!r}; not in the log)"
        if self.kind == "changed":
            return f"changed  {self.where}  (holds {self.actual!r}, expected {self.expected!r})"
        return f"{self.kind:<8} {self.where}  (holds {self.actual!r}, expected {self.expected!r})"


def diff_kv(actual: Mapping[str, str], table: RouteTable, root: str) -> list[Difference]:
    """``actual``: eventproxy's keys under ``root`` as etcd holds them."""
    desired = kv_pairs(table, root)
    out: list[Difference] = []
    for key in sorted(desired.keys() | actual.keys()):
        want, have = desired.get(key), actual.get(key)
        if want == have:
            continue
        if have is None:
            out.append(Difference("missing", key, want, None))
        elif want is None:
            out.append(Difference("stale", key, None, have))
        else:
            out.append(Difference("changed", key, want, have))
    return out


def _expected_routers(table: RouteTable) -> dict[str, dict[str, Any]]:
    http = dynamic_document(table)["http"]
    out = {}
    for name, router in http["routers"].items():
        if name == MARKER:
            continue
        out[name] = {
            "rule": router["rule"],
            "service": router["service"],
            "priority": router["priority"],
            "url": http["services"][name]["loadBalancer"]["servers"][0]["url"],
        }
    return out


def diff_file(text: str | None, table: RouteTable) -> list[Difference]:
    """``text``: the file's content (``None``: the file does not exist)."""
    if text is None:
        return [Difference("unreadable", "file", "a traefik file-provider file", "no file")]
    try:
        routers, seq = parse_toml_document(text)
    except ValueError as exc:
        return [Difference("unreadable", "file", "TOML", f"not TOML: {exc}")]
    out: list[Difference] = []
    if seq != table.seq:
        out.append(Difference("seq", "applied_seq", table.seq, seq))
    expected = _expected_routers(table)
    for name in sorted(expected.keys() | routers.keys()):
        want, have = expected.get(name), routers.get(name)
        if want == have:
            continue
        if have is None:
            out.append(Difference("missing", name, want, None))
        elif want is None:
            out.append(Difference("stale", name, None, have))
        else:
            out.append(Difference("changed", name, want, have))
    return out


def _node_router(entry: RouteEntry) -> dict[str, Any]:
    router, service = plane_entry(entry)
    return {
        "rule": router.rule,
        "service": router.service,
        "priority": router.priority,
        "servers": [redact_url(s.url) for s in service.servers],
    }


def diff_node(
    health: Mapping[str, Any], routes: Mapping[str, Any] | None, table: RouteTable
) -> list[Difference]:
    """A data-plane node against the log's fold: ``health`` is its ``GET /health`` document,
    ``routes`` its ``GET /routes`` one (every installed router; ``None``: the node has no such
    endpoint). Every eventproxy router is compared -- rule, service, priority, server URLs (with
    credentials shown as ``***`` on both sides) -- missing, changed or stale; routers that are
    not eventproxy's (a node's own ``--config``) are left out."""
    out: list[Difference] = []
    seq = health.get("applied_seq")
    if seq != table.seq:
        out.append(Difference("seq", "applied_seq", table.seq, seq))
    if routes is None or not isinstance(routes.get("routers"), Mapping):
        out.append(Difference("unreadable", "routes", "GET /routes: the node's routers", None))
        return out
    have_all: Mapping[str, Any] = routes["routers"]
    have = {n: r for n, r in have_all.items() if n.startswith(NAME_PREFIX)}
    want = {name_for(e.routespec): _node_router(e) for e in table.values()}
    for name in sorted(want.keys() | have.keys()):
        expected, actual = want.get(name), have.get(name)
        if expected == actual:
            continue
        if actual is None:
            out.append(Difference("missing", name, expected, None))
        elif expected is None:
            out.append(Difference("stale", name, None, actual))
        else:
            out.append(Difference("changed", name, expected, actual))
    return out
