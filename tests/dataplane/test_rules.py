"""The traefik v3 rule parser: grammar, Go string literals, precedence, errors, round-trips."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventproxy_dataplane import RuleSyntaxError, format_rule, parse_rule
from eventproxy_dataplane._rules import And, Matcher, Not, Or, Rule, matches

H = lambda v: Matcher("Host", v)  # noqa: E731
P = lambda v: Matcher("Path", v)  # noqa: E731
PP = lambda v: Matcher("PathPrefix", v)  # noqa: E731


@pytest.mark.parametrize(
    ("text", "tree"),
    [
        ("Host(`a.com`)", H("a.com")),
        ("Host(`A.Com.`)", H("a.com")),  # case-insensitive, one trailing dot ignored
        ("host(`a`)", H("a")),  # matcher names are case-insensitive (as in traefik)
        ("Host (`a`)", H("a")),
        ('PathPrefix("/x\\u00e9\\x60\\"\\\\")', PP('/xé`"\\')),
        ("PathPrefix(`/a\\n`)", PP("/a\\n")),  # raw strings have no escapes
        ('Path("\\101")', None),  # octal escape is fine but the path must start with '/'
        ("Path(`/a`)&&Host(`h`)", And(P("/a"), H("h"))),
        ("Host(`a`) || Host(`b`) && Path(`/c`)", Or(H("a"), And(H("b"), P("/c")))),
        ("(Host(`a`) || Host(`b`)) && Path(`/c`)", And(Or(H("a"), H("b")), P("/c"))),
        ("!Host(`a`) && Path(`/c`)", And(Not(H("a")), P("/c"))),
        ("!(Host(`a`) && Path(`/c`))", Not(And(H("a"), P("/c")))),
        ("!!Host(`a`)", Not(Not(H("a")))),
        ("Host(`a`) || Host(`b`) || Host(`c`)", Or(Or(H("a"), H("b")), H("c"))),
        ("Host(`*.w.com`)", H("*.w.com")),
    ],
)
def test_parse(text: str, tree: Rule | None) -> None:
    if tree is None:
        with pytest.raises(RuleSyntaxError, match="start with '/'"):
            parse_rule(text)
        return
    assert parse_rule(text) == tree
    assert parse_rule(format_rule(tree)) == tree


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty rule"),
        ("   ", "empty rule"),
        ("Host(`a`", "expected ')'"),
        ("Host(`a`))", "unexpected ')'"),
        ("Host(`a`) and Path(`/`)", "unexpected 'and'"),
        ("Host(`a`) &&", "expected a matcher"),
        ("Host('a')", "single quotes"),
        ("Host(`a`, `b`)", "exactly one argument, got 2"),
        ("PathPrefix(`/a`, `/b`)", "exactly one argument, got 2"),
        ("Host()", "exactly one argument, got 0"),
        ("Host(``)", "non-empty host"),
        ("PathPrefix(``)", "non-empty path"),
        ("PathPrefix(`rel`)", "does not start with '/'"),
        ("Host(`é.com`)", "non-ASCII"),
        ("Host(`a.*.com`)", "wildcard"),
        ("Host(`**.a.com`)", "wildcard"),
        ("HostRegexp(`.*`)", "HostRegexp is not supported"),
        ("Header(`a`, `b`)", "Header is not supported"),
        ("Method(`GET`)", "Method is not supported"),
        ("ClientIP(`10.0.0.0/8`)", "ClientIP is not supported"),
        ("Query(`a`)", "Query is not supported"),
        ("PathRegexp(`^/a`)", "PathRegexp is not supported"),
        ("Bogus(`a`)", "unknown matcher 'Bogus'"),
        ('Path("/a\\q")', "unknown escape"),
        ('Path("/a\\x4")', "bad \\x escape"),
        ('Path("/a\\ud800")', "not a code point"),
        ('Path("/a', "unterminated string"),
        ("Path(`/a", "unterminated raw string"),
        ("Path(`/a`) # x", "unexpected character '#'"),
    ],
)
def test_parse_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(RuleSyntaxError, match=re.escape(message)):
        parse_rule(text)


def test_rule_syntax_error_is_a_value_error() -> None:
    from eventproxy_dataplane import DataPlaneError

    with pytest.raises(ValueError):
        parse_rule("Nope(`x`)")
    assert issubclass(RuleSyntaxError, DataPlaneError)


# -- properties --------------------------------------------------------------------------------
_path_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
_host = st.from_regex(r"\A(\*\.)?[a-z0-9-]{1,8}(\.[a-z0-9-]{1,8}){0,2}\Z")
_leaf = st.one_of(
    _host.map(H),
    _path_text.map(lambda s: P("/" + s)),
    _path_text.map(lambda s: PP("/" + s)),
)
rules: st.SearchStrategy[Rule] = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        inner.map(Not),
        st.tuples(inner, inner).map(lambda t: And(*t)),
        st.tuples(inner, inner).map(lambda t: Or(*t)),
    ),
    max_leaves=8,
)


@given(rules)
@settings(max_examples=300, deadline=None)
def test_format_then_parse_round_trips(tree: Rule) -> None:
    text = format_rule(tree)
    assert parse_rule(text) == tree
    assert format_rule(parse_rule(text)) == text


def _naive(tree: Rule) -> str:
    """Fully parenthesised text: precedence does not matter for it."""
    if isinstance(tree, Matcher):
        return format_rule(tree)
    if isinstance(tree, Not):
        return f"!({_naive(tree.operand)})"
    op = "&&" if isinstance(tree, And) else "||"
    return f"({_naive(tree.left)}) {op} ({_naive(tree.right)})"


@given(rules)
@settings(max_examples=200, deadline=None)
def test_minimal_parentheses_keep_the_meaning(tree: Rule) -> None:
    assert parse_rule(_naive(tree)) == tree


@given(
    st.lists(_leaf, min_size=3, max_size=3),
    st.sampled_from(["&&", "||"]),
    st.sampled_from(["&&", "||"]),
)
def test_and_binds_tighter_than_or(leaves: list[Matcher], op1: str, op2: str) -> None:
    a, b, c = (format_rule(x) for x in leaves)
    tree = parse_rule(f"{a} {op1} {b} {op2} {c}")
    if op1 == "||" and op2 == "&&":
        assert tree == Or(leaves[0], And(leaves[1], leaves[2]))
    else:
        ctor1 = And if op1 == "&&" else Or
        ctor2 = And if op2 == "&&" else Or
        assert tree == ctor2(ctor1(leaves[0], leaves[1]), leaves[2])


@given(
    rules,
    st.sampled_from([None, "a.com", "x.a.com", "b"]),
    st.lists(st.sampled_from(["", "a", "ab", "é"]), min_size=1, max_size=3),
)
@settings(max_examples=200, deadline=None)
def test_not_is_negation(tree: Rule, host: str | None, segs: list[str]) -> None:
    assert matches(Not(tree), host, tuple(segs)) is not matches(tree, host, tuple(segs))


@given(st.text(max_size=40))
@settings(max_examples=500, deadline=None)
def test_parser_never_raises_anything_but_rule_syntax_error(text: str) -> None:
    with contextlib.suppress(RuleSyntaxError):
        parse_rule(text)
