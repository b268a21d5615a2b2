"""Router names are reversible and injective; rules quote every routespec exactly."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from jupyterhub.utils import url_escape_path

from eventproxy import InvalidRoutespecError, parse_routespec
from eventproxy.traefik import (
    dynamic_config,
    name_for,
    priority_for,
    quote_rule_value,
    routespec_from_name,
    rule_for,
)
from eventproxy_dataplane import parse_rule

SAFE_NAME = re.compile(r"^eventproxy-[A-Za-z0-9_-]+$")


@given(st.text(min_size=1))
def test_names_roundtrip_and_are_key_safe(text: str) -> None:
    name = name_for(text)
    assert SAFE_NAME.match(name)
    assert routespec_from_name(name) == text


@given(st.text(min_size=1), st.text(min_size=1))
def test_names_are_injective(a: str, b: str) -> None:
    if a != b:
        assert name_for(a) != name_for(b)


def test_foreign_names_are_not_ours() -> None:
    assert routespec_from_name("jupyterhub-route") is None
    assert routespec_from_name("eventproxy-_zz") is None
    assert routespec_from_name("eventproxy-_61") is None  # 'a' is never escaped


def decoded_value(literal: str) -> str:
    """What traefik's (Go) parser makes of a string literal."""
    rule = parse_rule(f"PathPrefix({literal})")
    return rule.value  # type: ignore[attr-defined,no-any-return]


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20))
def test_quoting_is_exact(value: str) -> None:
    value = "/" + value  # a path value is never empty
    assert decoded_value(quote_rule_value(value)) == value


@given(user=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20))
def test_rules_for_jupyterhub_names(user: str) -> None:
    try:
        spec = parse_routespec(f"/user/{url_escape_path(user)}/")
    except InvalidRoutespecError:
        return
    tree = parse_rule(rule_for(spec))
    prefix, exact = tree.left, tree.right  # type: ignore[union-attr]
    assert (prefix.name, prefix.value) == ("PathPrefix", f"/user/{user}/")
    assert (exact.name, exact.value) == ("Path", f"/user/{user}")


def test_hostile_looking_names_stay_inside_the_string() -> None:
    spec = parse_routespec("/user/x%60)%20%7C%7C%20PathPrefix(%60/")
    assert spec.decoded_path == "/user/x`) || PathPrefix(`/"
    rule = rule_for(spec)
    assert rule == (
        '(PathPrefix("/user/x\\x60) || PathPrefix(\\x60/")'
        ' || Path("/user/x\\x60) || PathPrefix(\\x60"))'
    )
    tree = parse_rule(rule)
    assert tree.left.value == spec.decoded_path  # type: ignore[union-attr]
    assert tree.right.value == spec.decoded_path[:-1]  # type: ignore[union-attr]


def test_host_rules_and_priorities() -> None:
    host = parse_routespec("Alice.Example.org/user/alice/")
    path = parse_routespec("/user/alice/")
    assert rule_for(host) == (
        "Host(`alice.example.org`) && (PathPrefix(`/user/alice/`) || Path(`/user/alice`))"
    )
    assert priority_for(host) == priority_for(path) + 1
    assert priority_for(parse_routespec("/user/alice/x/")) > priority_for(host)
    assert priority_for(parse_routespec("/")) < priority_for(path)


def test_dynamic_config_shape() -> None:
    from eventproxy.table import RouteEntry

    config = dynamic_config([RouteEntry("/user/a/", "http://127.0.0.1:9", {}, 1)])
    name = name_for("/user/a/")
    assert config["http"]["routers"][name]["service"] == name
    assert config["http"]["services"][name]["loadBalancer"]["servers"] == [
        {"url": "http://127.0.0.1:9"}
    ]
