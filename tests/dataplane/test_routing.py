"""The routing table: traefik's priority semantics, path decoding rules, incremental updates.

The property tests compare the trie lookup with the reference semantics -- every rule evaluated
in priority order (``brute_force_lookup``) -- for generated tables and requests, also after
batches of ``apply``.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventproxy_dataplane import (
    DynamicConfig,
    RouterSpec,
    RoutingTable,
    ServerSpec,
    ServiceSpec,
    parse_dynamic_config,
)


def svc(name: str, port: int = 8000) -> ServiceSpec:
    return ServiceSpec(name, (ServerSpec(f"http://127.0.0.1:{port}"),))


def table(*routers: tuple[str, str, int | None]) -> RoutingTable:
    config = DynamicConfig(
        routers={n: RouterSpec(n, rule, "s-" + n, p) for n, rule, p in routers},
        services={"s-" + n: svc("s-" + n) for n, _, _ in routers},
    )
    t, problems = RoutingTable.build(config)
    assert problems == []
    return t


def pick(t: RoutingTable, target: str | bytes, host: str | None = "hub.example") -> str | None:
    raw = target.encode() if isinstance(target, str) else target
    route = t.lookup(host, raw)
    assert route == t.brute_force_lookup(host, raw)
    return None if route is None else route.router


JUPYTERHUB = table(
    ("hub", "PathPrefix(`/`)", 1),
    ("alice", "PathPrefix(`/user/alice/`)", None),
    ("bob", "PathPrefix(`/user/bob/`)", None),
    ("walnut", "PathPrefix(`/user/walnut/$p~c|a! ch@rs/`)", None),
    ("hashq", "PathPrefix(`/user/h/#?/`)", None),
    ("unicode", "PathPrefix(`/user/é/`)", None),
    ("pct", "PathPrefix(`/user/p/100%/`)", None),
)


@pytest.mark.parametrize(
    ("target", "router"),
    [
        ("/user/alice/lab", "alice"),
        ("/user/alice/", "alice"),
        ("/user/alice", "hub"),  # PathPrefix(`/user/alice/`) needs the slash
        ("/user/alice/x?next=/user/bob/", "alice"),  # the query is not the path
        ("/user/%61lice/x", "alice"),  # unreserved characters may be encoded
        # JupyterHub's escaped spelling and the half-decoded one both reach the decoded rule
        ("/user/walnut/%24p~c%7Ca%21%20ch@rs/lab", "walnut"),
        ("/user/walnut/$p~c%7Ca!%20ch@rs/lab", "walnut"),
        ("/user/walnut/%24p%7Ec%7ca%21%20ch%40rs/", "walnut"),
        ("/user/h/%23%3F/x", "hashq"),
        ("/user/h/%23%3f/x", "hashq"),
        ("/user/%C3%A9/x", "unicode"),
        ("/user/%c3%a9/x", "unicode"),
        ("/user/p/100%25/x", "pct"),
        # an encoded slash is a character inside a segment, never a separator
        ("/user/alice%2Fx", "hub"),
        ("/user/alice%2flab", "hub"),
        ("/user/bob%2F..%2F..%2Fuser/alice/x", "hub"),
        ("/user/bob/..%2F..%2Fuser/alice/x", "bob"),  # stays with bob's own backend
    ],
)
def test_jupyterhub_paths(target: str, router: str) -> None:
    assert pick(JUPYTERHUB, target) == router


@pytest.mark.parametrize(
    ("target", "router"),
    [
        # dot and empty segments are resolved first, as traefik's sanitizePath does
        ("/user/alice/../bob/x", "bob"),
        ("/user/bob/../alice/x", "alice"),
        ("/user/alice/%2e%2e/bob/x", "bob"),
        ("/user/alice/%2E./bob/x", "bob"),
        ("/user/./alice/x", "alice"),
        ("/user/alice/..", "hub"),  # -> /user
        ("/user/alice/x/..", "hub"),  # -> /user/alice, which PathPrefix(`/user/alice/`) misses
        ("/../user/alice/x", "alice"),
        ("/user//alice/x", "alice"),
        ("//user/alice/x", "alice"),
        ("/user/alice/x?next=/../hub/", "alice"),  # the query is not touched
        ("/user/bob/..%2F..%2Fuser/alice/x", "bob"),  # an encoded slash is no separator
    ],
)
def test_dot_and_empty_segments_are_resolved_before_routing(target: str, router: str) -> None:
    assert pick(JUPYTERHUB, target) == router


@pytest.mark.parametrize(
    "target",
    [
        "/user/alice/%zz",  # bad percent-encoding
        "/user/alice/%4",
        "/user/alice/x#frag",
        "*",
        "user/alice/x",
        "",
    ],
)
def test_refused_targets_route_nowhere(target: str) -> None:
    assert pick(JUPYTERHUB, target) is None


def test_absolute_form_target_uses_its_authority() -> None:
    t = table(("h", "Host(`a.com`) && PathPrefix(`/x/`)", None), ("any", "PathPrefix(`/`)", 1))
    assert pick(t, "http://A.com:8080/x/y", host="other") == "h"
    assert pick(t, "https://a.com/x/y?q", host=None) == "h"
    assert pick(t, "http://b.com/x/y", host="a.com") == "any"
    assert pick(t, "http://a.com?x/", host="a.com") is None


@pytest.mark.parametrize(
    ("host", "router"),
    [
        ("a.com", "host"),
        ("A.COM", "host"),
        ("a.com:8080", "host"),
        ("a.com.", "host"),
        (" a.com ", "host"),
        ("b.a.com", "wild"),
        ("X.A.com:1", "wild"),
        ("c.b.a.com", "any"),  # a wildcard covers exactly one label
        ("[::1]:80", "v6"),
        (None, "any"),
        ("", "any"),
    ],
)
def test_host_matching(host: str | None, router: str) -> None:
    t = table(
        ("host", "Host(`A.com`)", None),
        ("wild", "Host(`*.a.com`)", None),
        ("v6", "Host(`::1`)", None),
        ("any", "PathPrefix(`/`)", 1),
    )
    assert pick(t, "/x", host=host) == router


def test_host_with_port_in_the_rule_never_matches() -> None:
    t = table(("hp", "Host(`a.com:8080`)", None))
    assert pick(t, "/", host="a.com:8080") is None


def test_priority_default_is_rule_length_in_bytes() -> None:
    # same length in characters, but 'é' is two bytes: the second rule is longer
    t = table(("ascii", "PathPrefix(`/ab`)", None), ("utf8", "PathPrefix(`/é`)", None))
    assert pick(t, "/%C3%A9b") == "utf8"
    t = table(("short", "PathPrefix(`/a`)", None), ("long", "PathPrefix(`/a`) || Path(`/q`)", None))
    assert pick(t, "/a") == "long"


def test_explicit_priority_wins_and_zero_means_default() -> None:
    t = table(("low", "PathPrefix(`/user/alice/`)", 2), ("high", "PathPrefix(`/`)", 100))
    assert pick(t, "/user/alice/x") == "high"
    config, problems = parse_dynamic_config(
        {
            "http": {
                "routers": {
                    "z": {"rule": "PathPrefix(`/z/`)", "service": "s", "priority": 0},
                    "root": {"rule": "PathPrefix(`/`)", "service": "s", "priority": "1"},
                    "neg": {"rule": "PathPrefix(`/z/n`)", "service": "s", "priority": -5},
                },
                "services": {"s": {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:1"}]}}},
            }
        }
    )
    assert problems == []
    assert config.routers["z"].priority is None
    t, _ = RoutingTable.build(config)
    assert pick(t, "/z/x") == "z"
    assert pick(t, "/z/n") == "z"  # -5 loses to the default priority 12 and to root (1)


def test_ties_go_to_the_smallest_router_name() -> None:
    t = table(("b", "PathPrefix(`/x`)", 5), ("a", "PathPrefix(`/`)", 5), ("c", "Path(`/x`)", 5))
    assert pick(t, "/x") == "a"


def test_path_is_exact_and_prefix_is_a_string_prefix() -> None:
    t = table(
        ("exact", "Path(`/a/b`)", 100),
        ("prefix", "PathPrefix(`/a/b`)", 50),
        ("root", "PathPrefix(`/`)", 1),
    )
    assert pick(t, "/a/b") == "exact"
    assert pick(t, "/a/b/") == "prefix"
    assert pick(t, "/a/bc/d") == "prefix"  # PathPrefix is not segment-aware (traefik)
    assert pick(t, "/a/") == "root"


def test_not_and_mixed_rules_use_the_fallback_and_merge_by_priority() -> None:
    t = table(
        ("notalice", "!PathPrefix(`/user/alice/`) && PathPrefix(`/user/`)", 20),
        ("alice", "PathPrefix(`/user/alice/`)", 30),
        ("twopaths", "PathPrefix(`/p/`) && PathPrefix(`/p/q`)", 40),
        ("root", "PathPrefix(`/`)", 1),
    )
    assert pick(t, "/user/alice/x") == "alice"
    assert pick(t, "/user/bob/x") == "notalice"
    assert pick(t, "/p/qq") == "twopaths"
    assert pick(t, "/p/r") == "root"


def test_bad_routers_are_disabled_with_a_problem_not_raised() -> None:
    config, problems = parse_dynamic_config(
        {
            "http": {
                "routers": {
                    "ok": {"rule": "PathPrefix(`/ok/`)", "service": "s"},
                    "hdr": {"rule": "Header(`a`, `b`) && PathPrefix(`/`)", "service": "s"},
                    "syntax": {"rule": "PathPrefix(`/x`", "service": "s"},
                    "orphan": {"rule": "PathPrefix(`/o/`)", "service": "missing"},
                    "norule": {"service": "s"},
                },
                "services": {"s": {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:1"}]}}},
            }
        }
    )
    t, table_problems = RoutingTable.build(config)
    wheres = {p.where for p in problems + table_problems}
    assert wheres == {
        "http.routers.hdr.rule",
        "http.routers.syntax.rule",
        "http.routers.orphan.service",
        "http.routers.norule.rule",
    }
    assert any("Header is not supported" in p.message for p in table_problems)
    assert len(t) == 1 and pick(t, "/ok/x") == "ok"


def test_apply_is_incremental_and_disables_a_router_whose_new_rule_is_bad() -> None:
    t = table(("a", "PathPrefix(`/a/`)", None), ("root", "PathPrefix(`/`)", 1))
    problems = t.apply([(RouterSpec("b", "PathPrefix(`/b/`)", "sb"), svc("sb"))], ["root"])
    assert problems == [] and len(t) == 2
    assert pick(t, "/b/x") == "b" and pick(t, "/c") is None
    problems = t.apply([(RouterSpec("a", "Method(`GET`)", "sa"), svc("sa"))], [])
    assert [p.where for p in problems] == ["http.routers.a.rule"]
    assert pick(t, "/a/x") is None and len(t) == 1
    t.apply([], ["b", "never-existed"])
    assert len(t) == 0 and t._tries == {} and t._fallback == []  # nothing left behind


def test_route_is_immutable_and_survives_replacement() -> None:
    t = table(("a", "PathPrefix(`/a/`)", None))
    before = t.lookup("h", b"/a/x")
    assert before is not None
    t.apply([(RouterSpec("a", "PathPrefix(`/a/`)", "new"), svc("new", 9999))], [])
    after = t.lookup("h", b"/a/x")
    assert before.service.name == "s-a" and after is not None and after.service.name == "new"
    with pytest.raises(AttributeError):
        before.router = "x"  # type: ignore[misc]


# -- properties: trie lookup == evaluate every rule in priority order ---------------------------
_SEGS = ["", "u", "us", "user", "al", "alice", "é", "$x", "a b", "#?"]
_HOSTS = ["a.com", "b.com", "*.w.com", "x.w.com"]


def _path(segs: list[str]) -> str:
    return "/" + "/".join(segs)


_rule_path = st.lists(st.sampled_from(_SEGS), min_size=1, max_size=3).map(_path)
_leaf = st.one_of(
    st.sampled_from(_HOSTS).map(lambda h: f"Host(`{h}`)"),
    _rule_path.map(lambda p: f"PathPrefix(`{p}`)"),
    _rule_path.map(lambda p: f"Path(`{p}`)"),
)
_rule_text = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        inner.map(lambda r: f"!({r})"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]}) && ({t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"({t[0]}) || ({t[1]})"),
        st.tuples(st.sampled_from(_HOSTS), _rule_path).map(
            lambda t: f"Host(`{t[0]}`) && PathPrefix(`{t[1]}`)"
        ),
    ),
    max_leaves=5,
)
_router = st.tuples(_rule_text, st.sampled_from([None, None, 1, 5, 30, 100]))
_routers = st.dictionaries(st.from_regex(r"\A[a-e][0-9]?\Z"), _router, max_size=12)


def _spell(seg: str, how: int) -> str:
    if how == 0:
        return quote(seg, safe="$@!~")
    if how == 1:
        return quote(seg, safe="")
    return quote(seg, safe="").lower()


_request = st.tuples(
    st.sampled_from([None, "a.com", "A.COM:80", "b.com", "x.w.com", "y.w.com", "w.com"]),
    st.lists(
        st.tuples(st.sampled_from([*_SEGS, "alice%2Fx", ".."]), st.integers(0, 2)),
        min_size=1,
        max_size=4,
    ),
    st.booleans(),
)


def _target(req_segs: list[tuple[str, int]], query: bool) -> bytes:
    parts = [s if s in ("alice%2Fx", "..") else _spell(s, how) for s, how in req_segs]
    return ("/" + "/".join(parts) + ("?q=/x" if query else "")).encode()


def _install(routers: dict[str, tuple[str, int | None]]) -> list[tuple[RouterSpec, ServiceSpec]]:
    return [
        (RouterSpec(n, rule, "s-" + n, prio), svc("s-" + n)) for n, (rule, prio) in routers.items()
    ]


@given(_routers, st.lists(_request, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_trie_lookup_equals_brute_force(
    routers: dict[str, tuple[str, int | None]],
    requests: list[tuple[str | None, list[tuple[str, int]], bool]],
) -> None:
    t = RoutingTable()
    assert t.apply(_install(routers), []) == []
    for host, segs, query in requests:
        target = _target(segs, query)
        assert t.lookup(host, target) == t.brute_force_lookup(host, target), (host, target)


@given(
    _routers,
    st.lists(
        st.tuples(_routers, st.lists(st.from_regex(r"\A[a-e][0-9]?\Z"), max_size=4)), max_size=4
    ),
    st.lists(_request, min_size=1, max_size=20),
)
@settings(max_examples=150, deadline=None)
def test_trie_lookup_equals_brute_force_after_apply(
    routers: dict[str, tuple[str, int | None]],
    batches: list[tuple[dict[str, tuple[str, int | None]], list[str]]],
    requests: list[tuple[str | None, list[tuple[str, int]], bool]],
) -> None:
    t = RoutingTable()
    t.apply(_install(routers), [])
    fresh = dict(routers)
    for upserts, removals in batches:
        t.apply(_install(upserts), removals)
        for name in removals:
            fresh.pop(name, None)
        fresh.update(upserts)
    rebuilt = RoutingTable()
    rebuilt.apply(_install(fresh), [])
    assert t.routers() == rebuilt.routers()
    for host, segs, query in requests:
        target = _target(segs, query)
        expected = rebuilt.brute_force_lookup(host, target)
        assert t.lookup(host, target) == expected
        assert t.brute_force_lookup(host, target) == expected
    t.apply([], list(fresh))
    assert len(t) == 0 and t._tries == {} and t._fallback == []


def test_apply_never_raises_on_bad_input() -> None:
    t = RoutingTable()
    deep = "(" * 5000 + "Host(`a`)" + ")" * 5000
    problems = t.apply(
        [
            (RouterSpec("deep", deep, "s"), svc("s")),
            ("not a spec", svc("s")),  # type: ignore[list-item]
            (RouterSpec("ok", "Host(`a`)", "s"), svc("s")),
        ],
        [],
    )
    assert len(problems) == 2 and len(t) == 1
    assert problems[0].where == "http.routers.deep.rule"


_any_text_segment = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6
).filter(lambda s: s not in (".", "..") and "/" not in s)


@given(st.lists(_any_text_segment, min_size=1, max_size=4), st.booleans(), st.data())
@settings(max_examples=300, deadline=None)
def test_every_spelling_of_a_path_decodes_to_the_same_segments(
    segs: list[str], slash: bool, data: st.DataObject
) -> None:
    want = (*segs, "") if slash else tuple(segs)
    spelled = []
    for seg in want:
        out = []
        for ch in seg:
            choice = data.draw(st.integers(0, 2))
            safe = ch.isascii() and (ch.isalnum() or ch in "-._~!$&'()*+,;=:@")
            if choice == 0 and safe:
                out.append(ch)
            else:
                enc = quote(ch, safe="")
                enc = "".join(f"%{b:02X}" for b in ch.encode()) if enc == ch else enc
                out.append(enc.lower() if choice == 2 else enc)
        spelled.append("".join(out))
    target = ("/" + "/".join(spelled)).encode()
    from eventproxy_dataplane._paths import parse_target

    assert parse_target(target) == (None, want)
    t = table(("r", "PathPrefix(" + repr_rule("/" + "/".join(want)) + ")", None))
    assert pick(t, target) == "r"


def repr_rule(path: str) -> str:
    from eventproxy_dataplane._rules import Matcher, format_rule

    return format_rule(Matcher("Path", path))[len("Path(") : -1]


def test_a_router_given_a_new_service_is_routed_to_it_where_it_stands() -> None:
    """Re-upserting an unchanged router with another service swaps the route in place (trie
    exact and prefix entries, the fallback list); the rule is not parsed again."""
    specs = [
        RouterSpec("prefix", "PathPrefix(`/user/a/`) || Path(`/user/a`)", "s", None),
        RouterSpec("fallback", "PathPrefix(`/x/`) && !Path(`/x/no`)", "s", None),
        RouterSpec("hub", "PathPrefix(`/`)", "s", 1),
    ]
    t = RoutingTable()
    assert t.apply([(s, svc("s", 8000)) for s in specs], []) == []
    compiled = {name: t._installed[name] for name in ("prefix", "fallback")}
    assert t.apply([(specs[0], svc("s", 8001)), (specs[1], svc("s", 8002))], []) == []
    assert t._installed["prefix"] is compiled["prefix"]  # the same compiled router, kept
    assert t._installed["fallback"] is compiled["fallback"]
    for target, router, port in [
        ("/user/a/lab", "prefix", 8001),
        ("/user/a", "prefix", 8001),
        ("/x/yes", "fallback", 8002),
        ("/x/no", "hub", 8000),
    ]:
        route = t.lookup("hub.example", target.encode())
        assert route == t.brute_force_lookup("hub.example", target.encode())
        assert route is not None and route.router == router
        assert route.service.servers[0].port == port
    # a changed rule for the same name is reinstalled, not swapped
    moved = RouterSpec("prefix", "PathPrefix(`/user/b/`)", "s", None)
    assert t.apply([(moved, svc("s", 8003))], []) == []
    assert pick(t, "/user/a/lab") == "hub"
    assert pick(t, "/user/b/lab") == "prefix"
