"""The traefik projection's content: spellings, rules, the marker, the TOML file, the KV pairs,
and the KV transaction plans (simulated on a dict with etcd's compare semantics)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jupyterhub.utils import url_escape_path

from eventproxy import Record, RouteAdded, RouteRemoved, RouteTable, fold_all, parse_routespec
from eventproxy.projectors.kv_plan import Limits, Txn, plan_apply, plan_sync
from eventproxy.projectors.traefik_config import (
    MARKER,
    dynamic_document,
    kv_pairs,
    marker_key,
    marker_rule,
    parse_toml_document,
    seq_from_marker_rule,
    toml_document,
    traefik_rule,
    traefik_spelling,
)
from eventproxy.traefik import routespec_from_name
from eventproxy_dataplane import RoutingTable, config_from_kv, parse_dynamic_config, parse_rule

WALNUT = "/user/walnut/%24p~c%7Ca%21%20ch@rs/"
TS = datetime(2026, 1, 1, tzinfo=UTC)


def test_traefik_spelling_keeps_reserved_escapes_and_decodes_the_rest() -> None:
    assert traefik_spelling(WALNUT) == "/user/walnut/%24p~c|a%21 ch@rs/"
    assert traefik_spelling("/user/h/%23%3F/") == "/user/h/%23%3F/"
    assert traefik_spelling("/user/h/%2a%7e%C3%A9/") == "/user/h/%2A~é/"
    assert traefik_spelling("/user/%25/") == "/user/%25/"
    assert traefik_spelling("/user/a@b/") == "/user/a@b/"


def test_rules_carry_both_spellings_and_the_trailing_slash_policy() -> None:
    assert traefik_rule(parse_routespec("/")) == "PathPrefix(`/`)"
    assert traefik_rule(parse_routespec("/user/a/")) == "PathPrefix(`/user/a/`) || Path(`/user/a`)"
    assert traefik_rule(parse_routespec(WALNUT)) == (
        "PathPrefix(`/user/walnut/%24p~c|a%21 ch@rs/`) || Path(`/user/walnut/%24p~c|a%21 ch@rs`)"
        " || PathPrefix(`/user/walnut/$p~c|a! ch@rs/`) || Path(`/user/walnut/$p~c|a! ch@rs`)"
    )
    assert traefik_rule(parse_routespec("Hub.Example.com/x/")) == (
        "Host(`hub.example.com`) && (PathPrefix(`/x/`) || Path(`/x`))"
    )
    assert traefik_rule(parse_routespec("h.test/")) == "Host(`h.test`) && PathPrefix(`/`)"
    # a backtick (escaped in the routespec) ends no string: the value becomes a Go string
    rule = traefik_rule(parse_routespec("/user/%60x/"))
    assert "\\x60" in rule
    parse_rule(rule)


names = st.text(
    st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="/\\"),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))


@given(user=names, server=names)
@settings(max_examples=150, deadline=None)
def test_the_data_plane_routes_every_jupyterhub_name_with_the_traefik_rule(
    user: str, server: str
) -> None:
    """The same rules feed the pure-Python data plane (e.g. a node reading the KV layout)."""
    spec = f"/user/{url_escape_path(user)}/{url_escape_path(server)}/"
    other = f"/user/{url_escape_path(user)}/"
    table = RouteTable()
    records = [
        Record(1, TS, "t", RouteAdded(other, "http://127.0.0.1:1", {})),
        Record(2, TS, "t", RouteAdded(spec, "http://127.0.0.1:2", {})),
    ]
    table = fold_all(table, records)
    config, problems = parse_dynamic_config(dynamic_document(table))
    assert not problems
    routing, problems = RoutingTable.build(config)
    assert not problems

    def hit(target: str) -> str | None:
        route = routing.lookup("h", target.encode())
        return routespec_from_name(route.router) if route else None

    assert hit(spec + "lab") == spec
    assert hit(spec.rstrip("/")) == spec
    assert hit(spec.rstrip("/") + "x/lab") == other  # P followed by more is not P/


def test_marker_round_trip() -> None:
    assert seq_from_marker_rule(marker_rule(42)) == 42
    assert seq_from_marker_rule("Host(`x`)") is None
    assert seq_from_marker_rule(None) is None
    assert routespec_from_name(MARKER) is None


def _table(n: int, *, removed: tuple[int, ...] = ()) -> RouteTable:
    records = [
        Record(i + 1, TS, "t", RouteAdded(f"/user/u{i}/", f"http://127.0.0.1:{1000 + i}", {}))
        for i in range(n)
    ]
    seq = n
    for i in removed:
        seq += 1
        records.append(Record(seq, TS, "t", RouteRemoved(f"/user/u{i}/")))
    return fold_all(RouteTable(), records)


def test_toml_document_is_deterministic_and_parses_back() -> None:
    table = _table(3, removed=(1,))
    text = toml_document(table)
    assert text == toml_document(table)
    assert "# applied_seq = 4" in text
    tomllib.loads(text)
    routers, seq = parse_toml_document(text)
    assert seq == 4
    assert sorted(routespec_from_name(n) for n in routers) == ["/user/u0/", "/user/u2/"]
    assert routers["eventproxy-_2fuser_2fu0_2f"]["url"] == "http://127.0.0.1:1000"


def test_kv_pairs_are_traefiks_layout_and_parse_in_the_data_plane() -> None:
    table = _table(2)
    pairs = kv_pairs(table, "traefik")
    assert pairs[marker_key("traefik")] == marker_rule(2)
    name = "eventproxy-_2fuser_2fu1_2f"
    assert pairs[f"traefik/http/routers/{name}/service"] == name
    assert pairs[f"traefik/http/services/{name}/loadBalancer/servers/0/url"] == (
        "http://127.0.0.1:1001"
    )
    config, problems = config_from_kv(pairs, "traefik")
    assert not problems
    assert set(config.routers) == {name, "eventproxy-_2fuser_2fu0_2f", MARKER}


# -- KV plans, executed on a dict with etcd's semantics ---------------------------------------
class FakeEtcd:
    def __init__(self, root: str = "traefik") -> None:
        self.data: dict[str, str] = {}
        self.key = marker_key(root)

    def run(self, txn: Txn, limits: Limits) -> bool:
        assert txn.ops <= limits.max_ops, (txn.ops, limits)
        if self.data.get(self.key) != txn.expect:
            return False
        for prefix in txn.delete_prefixes:
            for k in [k for k in self.data if k.startswith(prefix)]:
                del self.data[k]
        for k in txn.delete_keys:
            self.data.pop(k, None)
        self.data.update(txn.puts)
        return True


route_ops = st.lists(
    st.tuples(st.booleans(), st.integers(0, 30), st.integers(1, 3)), min_size=1, max_size=120
)


def _records(ops: list[tuple[bool, int, int]], start: int) -> list[Record]:
    out = []
    for i, (add, user, port) in enumerate(ops):
        spec = f"/user/u{user}/"
        event = RouteAdded(spec, f"http://127.0.0.1:{port}", {}) if add else RouteRemoved(spec)
        out.append(Record(start + i, TS, "t", event))
    return out


@given(first=route_ops, second=route_ops, max_ops=st.sampled_from([10, 13, 40, 128, 10_000]))
@settings(max_examples=120, deadline=None)
def test_plans_leave_a_consistent_state_after_every_txn(
    first: list[tuple[bool, int, int]], second: list[tuple[bool, int, int]], max_ops: int
) -> None:
    limits = Limits(max_ops=max_ops)
    etcd = FakeEtcd()
    table = RouteTable()
    expect = None
    for batch in (_records(first, 1), _records(second, len(first) + 1)):
        txns, after = plan_apply(table, batch, "traefik", expect, limits)
        for txn in txns:
            assert etcd.run(txn, limits)
            assert txn.seq is not None
            # after each txn, the keys are exactly the projection of the fold at its seq
            at = fold_all(table, [r for r in batch if r.seq <= txn.seq])
            assert etcd.data == kv_pairs(at, "traefik")
        if max_ops >= 10_000:
            assert len(txns) == 1  # a burst is one txn when the limits allow it
        table, expect = after, txns[-1].marker
    assert etcd.data == kv_pairs(table, "traefik")
    # a stale plan (expecting an older marker) is refused whole
    stale, _ = plan_apply(
        table, _records([(True, 99, 1)], table.seq + 1), "traefik", marker_rule(0), limits
    )
    assert not etcd.run(stale[0], limits)


@given(
    ops=route_ops,
    drift=st.lists(st.tuples(st.sampled_from(["del", "edit", "add"]), st.integers(0, 200))),
    wipe=st.booleans(),
    max_ops=st.sampled_from([10, 20, 128]),
)
@settings(max_examples=120, deadline=None)
def test_sync_repairs_any_drift(
    ops: list[tuple[bool, int, int]], drift: list[tuple[str, int]], wipe: bool, max_ops: int
) -> None:
    limits = Limits(max_ops=max_ops)
    table = fold_all(RouteTable(), _records(ops, 1))
    etcd = FakeEtcd()
    etcd.data = kv_pairs(table, "traefik")
    keys = sorted(etcd.data)
    for what, i in drift:
        key = keys[i % len(keys)]
        if what == "del":
            etcd.data.pop(key, None)
        elif what == "edit":
            etcd.data[key] = "edited"
        else:
            etcd.data[f"traefik/http/routers/eventproxy-_2fstale{i}_2f/rule"] = "PathPrefix(`/`)"
    if wipe:
        etcd.data = {}
    foreign = {"traefik/http/routers/theirs/rule": "Host(`x`)"}
    etcd.data.update(foreign)
    txns = plan_sync(
        {k: v for k, v in etcd.data.items() if k not in foreign}, table, "traefik", limits
    )
    for i, txn in enumerate(txns):
        assert etcd.run(txn, limits)
        if i < len(txns) - 1:  # a half-written re-projection never names a seq
            assert seq_from_marker_rule(etcd.data[marker_key("traefik")]) is None
    assert etcd.data == {**kv_pairs(table, "traefik"), **foreign}
    assert plan_sync(kv_pairs(table, "traefik"), table, "traefik", limits) == []


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="max_ops"):
        Limits(max_ops=2)
