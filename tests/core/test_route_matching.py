"""The routespec policy as the data plane routes it, against a model written from the policy.

The policy (``docs/routespecs.md``): a routespec ``P/`` routes the requests whose decoded path is
``P`` or starts with ``P/`` -- never ``P`` followed by anything else -- and among the routes that
match, the one with the longest path wins (for the same path, the one naming the host). The model
below says exactly that, in a few lines of string comparison. A routespec with an empty segment
(``example.com//has%20space/foo/``, accepted but not as the last segment) is matched literally,
and since the data plane merges ``//`` in request paths before routing (as traefik's
``sanitizePath`` does), no request reaches it; a request written with ``//`` is routed as the
path without it.
The implementation under test is the real chain of the in-process plane: routespec ->
``plane_entry`` (names, ``rule_for``, ``priority_for``) -> the data plane's ``RoutingTable``
(segment tries), and the table's brute-force evaluation of every rule; all must agree.
"""

from __future__ import annotations

from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventproxy import parse_routespec
from eventproxy.projection import plane_entry
from eventproxy.table import RouteEntry
from eventproxy.traefik import priority_for, rule_for
from eventproxy_dataplane import RoutingTable

# Segments that start alike (a, ab), decode alike ($ and %24, é and %C3%A9), or are empty.
SEGMENTS = ["a", "ab", "b", "$", "%24", "é", "%C3%A9", "user", ""]
HOSTS = [None, "a.test", "b.test"]


def model(routes: list[tuple[str | None, str]], host: str | None, path: str) -> str | None:
    """The routespec a request reaches under the policy, or None."""
    decoded = _merged(unquote(path.split("?", 1)[0]))
    best: tuple[int, int, str] | None = None
    for route_host, spec in routes:
        if route_host is not None and route_host != host:
            continue
        want = unquote(spec[spec.index("/") :])
        if not (decoded == want[:-1] or decoded.startswith(want)):
            continue
        key = (len(want.encode()), route_host is not None, spec)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def _merged(path: str) -> str:
    """``//`` merged, a trailing slash kept (traefik's sanitizePath; no dot segments here)."""
    merged = "/" + "/".join(s for s in path[1:].split("/") if s)
    return merged + "/" if path.endswith("/") and not merged.endswith("/") else merged


@st.composite
def route_sets(draw: st.DrawFn) -> list[tuple[str | None, str]]:
    routes: dict[tuple[str | None, str], tuple[str | None, str]] = {}
    for _ in range(draw(st.integers(1, 12))):
        host = draw(st.sampled_from(HOSTS))
        segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=3))
        if segments and segments[-1] == "":
            segments[-1] = "b"  # an empty last segment is refused (test_routespec.py)
        path = "/" + "".join(s + "/" for s in segments)
        spec = path if host is None else host + path
        # Two routespecs that route the same paths (/$/ and /%24/) tie; the policy does not say
        # which wins (the data plane picks by name), so keep one of each.
        routes.setdefault((host, unquote(path)), (host, spec))
    return list(routes.values())


@st.composite
def requests(draw: st.DrawFn) -> tuple[str | None, str]:
    segments = draw(st.lists(st.sampled_from(SEGMENTS), max_size=4))
    path = "/" + "/".join(segments)
    if segments and draw(st.booleans()):
        path += "/"
    if draw(st.booleans()):
        path += "?next=/user/a/b/"
    return draw(st.sampled_from(["a.test", "b.test", "c.test"])), path


def table_for(routes: list[tuple[str | None, str]]) -> RoutingTable:
    table = RoutingTable()
    entries = [
        RouteEntry.create(spec, f"http://127.0.0.1:{i + 1}", {}, i)
        for i, (_, spec) in enumerate(routes)
    ]
    assert table.apply([plane_entry(e) for e in entries], ()) == []
    return table


def routed(table: RoutingTable, host: str, path: str) -> tuple[str | None, str | None]:
    from eventproxy.traefik import routespec_from_name

    fast = table.lookup(host, path.encode())
    slow = table.brute_force_lookup(host, path.encode())
    return (
        None if fast is None else routespec_from_name(fast.router),
        None if slow is None else routespec_from_name(slow.router),
    )


@settings(max_examples=400, deadline=None)
@given(route_sets(), st.lists(requests(), min_size=1, max_size=20))
def test_data_plane_routes_as_the_policy_says(
    routes: list[tuple[str | None, str]], reqs: list[tuple[str, str]]
) -> None:
    table = table_for(routes)
    for host, path in reqs:
        expected = model(routes, host, path)
        assert routed(table, host, path) == (expected, expected), (host, path)


NAMED = [
    (None, "/"),
    (None, "/user/a/"),
    (None, "/user/a/b/"),
    (None, "/user/ab/"),
    (None, "//has%20space/foo/"),  # JupyterHub's extra route, as under host routing
    ("hub.test", "hub.test//missing-trailing/slash/"),
]


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/user/a/b", "/user/a/b/"),  # the named server, not the default one
        ("/user/a/b?x=1", "/user/a/b/"),
        ("/user/a/b/lab", "/user/a/b/"),
        ("/user/a", "/user/a/"),
        ("/user/a?x=1", "/user/a/"),
        ("/user/a/bc", "/user/a/"),
        ("/user/ab", "/user/ab/"),
        ("/user/abc", "/"),  # /user/ab/ never captures /user/abc
        ("/user/a.", "/"),
        ("/user", "/"),
        ("/has%20space/foo/x", "/"),  # the literal route never captures the path without //
        ("/missing-trailing/slash", "/"),
        ("//has%20space/foo/x", "/"),  # ... and requests with // are routed without it
        ("//missing-trailing/slash", "/"),
        ("/user//a/", "/user/a/"),
    ],
)
def test_named_servers_without_trailing_slash(path: str, expected: str | None) -> None:
    assert model(NAMED, "hub.test", path) == expected
    assert routed(table_for(NAMED), "hub.test", path) == (expected, expected)


def test_rules_say_prefix_or_exact() -> None:
    assert rule_for(parse_routespec("/")) == "PathPrefix(`/`)"
    assert rule_for(parse_routespec("/user/a/")) == "(PathPrefix(`/user/a/`) || Path(`/user/a`))"
    assert (
        rule_for(parse_routespec("A.test/user/%24/"))
        == "Host(`a.test`) && (PathPrefix(`/user/$/`) || Path(`/user/$`))"
    )
    # Priorities ignore the rule's text: the longest path wins, then the host.
    assert priority_for(parse_routespec("/user/a/b/")) > priority_for(parse_routespec("a.test/"))
