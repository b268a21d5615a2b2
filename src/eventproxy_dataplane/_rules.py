"""Traefik v3 router rules: parse the text into a small tree, print it back, evaluate it.

Theory of operation: pure functions over values. ``parse_rule`` accepts traefik v3's rule
grammar -- matcher calls ``Name(arg, ...)`` combined with ``!``, ``&&``, ``||`` and parentheses,
with Go's precedence (``!`` binds tighter than ``&&``, which binds tighter than ``||``; binary
operators associate to the left). Arguments are Go string literals: raw strings in backticks
(no escapes) or interpreted strings in double quotes (Go escapes). Matcher names are matched
case-insensitively, as traefik does. Only ``Host``, ``Path`` and ``PathPrefix`` are supported;
any other matcher (``HostRegexp``, ``Header``, ``Method``, ``ClientIP``, ``Query``, ...) raises
:class:`RuleSyntaxError`, so the routing table disables that router and reports why.

The tree is built from frozen values; ``format_rule`` prints a canonical text that parses back
to the same tree. ``matches`` evaluates a tree against a request described by its canonical
host (see ``_paths.canonical_host``) and its decoded path segments (see ``_paths.parse_target``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ._errors import RuleSyntaxError

__all__ = [
    "And",
    "Matcher",
    "Not",
    "Or",
    "Predicate",
    "Rule",
    "compile_rule",
    "format_rule",
    "host_matches",
    "matches",
    "parse_rule",
    "path_matches",
]

HOST: Final = "Host"
PATH: Final = "Path"
PATH_PREFIX: Final = "PathPrefix"
SUPPORTED: Final = {m.lower(): m for m in (HOST, PATH, PATH_PREFIX)}
UNSUPPORTED: Final = {
    m.lower(): m
    for m in (
        "ClientIP",
        "Method",
        "HostRegexp",
        "PathRegexp",
        "Header",
        "HeaderRegexp",
        "Query",
        "QueryRegexp",
        "HostSNI",
        "HostSNIRegexp",
        "ALPN",
        "Headers",
        "HeadersRegexp",
        "HostHeader",
        "PathPrefixStrip",
        "PathStrip",
    )
}


@dataclass(frozen=True, slots=True)
class Matcher:
    """``Host(value)``, ``Path(value)`` or ``PathPrefix(value)``; ``value`` is validated.

    A Host value is stored lower-cased with a trailing dot removed (traefik compares host names
    case-insensitively and ignores one trailing dot).
    """

    name: str
    value: str


@dataclass(frozen=True, slots=True)
class Not:
    operand: Rule


@dataclass(frozen=True, slots=True)
class And:
    left: Rule
    right: Rule


@dataclass(frozen=True, slots=True)
class Or:
    left: Rule
    right: Rule


Rule = Matcher | Not | And | Or


# -- lexer -------------------------------------------------------------------------------------
_IDENT, _STRING, _OP, _END = "ident", "string", "op", "end"


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    pos: int


_SIMPLE_ESCAPES: Final = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
}


def _interpreted(rule: str, start: int) -> tuple[str, int]:
    """Decode the Go interpreted string starting at ``rule[start] == '"'``; return (value, end)."""
    out = bytearray()
    i = start + 1
    while True:
        if i >= len(rule):
            raise RuleSyntaxError(f"unterminated string starting at offset {start}")
        c = rule[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), i + 1
        if c == "\n":
            raise RuleSyntaxError(f"newline in string starting at offset {start}")
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if i + 1 >= len(rule):
            raise RuleSyntaxError(f"unterminated escape at offset {i}")
        e = rule[i + 1]
        if e in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[e].encode()
            i += 2
        elif e in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[e]
            digits = rule[i + 2 : i + 2 + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise RuleSyntaxError(f"bad \\{e} escape at offset {i}")
            n = int(digits, 16)
            if e == "x":
                out.append(n)
            else:
                if n > 0x10FFFF or 0xD800 <= n <= 0xDFFF:
                    raise RuleSyntaxError(f"escape \\{e}{digits} at offset {i} is not a code point")
                out += chr(n).encode()
            i += 2 + width
        elif e in "01234567":
            digits = rule[i + 1 : i + 4]
            if len(digits) != 3 or any(d not in "01234567" for d in digits) or int(digits, 8) > 255:
                raise RuleSyntaxError(f"bad octal escape at offset {i}")
            out.append(int(digits, 8))
            i += 4
        else:
            raise RuleSyntaxError(f"unknown escape sequence \\{e} at offset {i}")


def _tokens(rule: str) -> list[_Token]:
    toks: list[_Token] = []
    i, n = 0, len(rule)
    while i < n:
        c = rule[i]
        if c in " \t\r\n":
            i += 1
        elif c == "`":
            end = rule.find("`", i + 1)
            if end < 0:
                raise RuleSyntaxError(f"unterminated raw string starting at offset {i}")
            toks.append(_Token(_STRING, rule[i + 1 : end].replace("\r", ""), i))
            i = end + 1
        elif c == '"':
            value, end = _interpreted(rule, i)
            toks.append(_Token(_STRING, value, i))
            i = end
        elif rule.startswith(("&&", "||"), i):
            toks.append(_Token(_OP, rule[i : i + 2], i))
            i += 2
        elif c in "!(),":
            toks.append(_Token(_OP, c, i))
            i += 1
        elif c.isascii() and (c.isalpha() or c == "_"):
            j = i + 1
            while j < n and rule[j].isascii() and (rule[j].isalnum() or rule[j] == "_"):
                j += 1
            toks.append(_Token(_IDENT, rule[i:j], i))
            i = j
        elif c == "'":
            raise RuleSyntaxError(
                f"single quotes are not string delimiters (offset {i}); "
                "use backticks or double quotes"
            )
        else:
            raise RuleSyntaxError(f"unexpected character {c!r} at offset {i}")
    toks.append(_Token(_END, "", n))
    return toks


# -- parser ------------------------------------------------------------------------------------
class _Parser:
    def __init__(self, rule: str) -> None:
        self.toks = _tokens(rule)
        self.i = 0

    def peek(self) -> _Token:
        return self.toks[self.i]

    def take(self) -> _Token:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.kind != _OP or tok.text != text:
            found = tok.text or "end of rule"
            raise RuleSyntaxError(f"expected {text!r} at offset {tok.pos}, found {found!r}")

    def parse(self) -> Rule:
        if self.peek().kind == _END:
            raise RuleSyntaxError("empty rule")
        tree = self.or_expr()
        tok = self.peek()
        if tok.kind != _END:
            raise RuleSyntaxError(f"unexpected {tok.text!r} at offset {tok.pos}")
        return tree

    def or_expr(self) -> Rule:
        left = self.and_expr()
        while self.peek().kind == _OP and self.peek().text == "||":
            self.take()
            left = Or(left, self.and_expr())
        return left

    def and_expr(self) -> Rule:
        left = self.unary()
        while self.peek().kind == _OP and self.peek().text == "&&":
            self.take()
            left = And(left, self.unary())
        return left

    def unary(self) -> Rule:
        tok = self.peek()
        if tok.kind == _OP and tok.text == "!":
            self.take()
            return Not(self.unary())
        if tok.kind == _OP and tok.text == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        if tok.kind == _IDENT:
            return self.call()
        found = tok.text or "end of rule"
        raise RuleSyntaxError(f"expected a matcher at offset {tok.pos}, found {found!r}")

    def call(self) -> Rule:
        name_tok = self.take()
        self.expect("(")
        args: list[str] = []
        if not (self.peek().kind == _OP and self.peek().text == ")"):
            while True:
                tok = self.take()
                if tok.kind != _STRING:
                    found = tok.text or "end of rule"
                    raise RuleSyntaxError(
                        f"expected a string argument at offset {tok.pos}, found {found!r}"
                    )
                args.append(tok.text)
                if self.peek().kind == _OP and self.peek().text == ",":
                    self.take()
                    continue
                break
        self.expect(")")
        return make_matcher(name_tok.text, args)


def _check_host(value: str) -> str:
    if not value:
        raise RuleSyntaxError("Host needs a non-empty host name")
    if not value.isascii():
        raise RuleSyntaxError(f"Host value {value!r} has non-ASCII characters (not allowed)")
    if any(c in value for c in " \t\r\n/\\`\"'()"):
        raise RuleSyntaxError(f"Host value {value!r} is not a host name")
    host = value.lower()
    if host.endswith(".") and len(host) > 1:
        host = host[:-1]
    labels = host.split(".")
    if "*" in host and (
        labels[0] != "*" or any("*" in label for label in labels[1:]) or len(labels) < 2
    ):
        raise RuleSyntaxError(
            f"Host value {value!r}: only a single leading '*.' wildcard label is supported"
        )
    return host


def make_matcher(name: str, args: list[str]) -> Matcher:
    """Build and validate a matcher from its (case-insensitive) name and string arguments."""
    canonical = SUPPORTED.get(name.lower())
    if canonical is None:
        known = UNSUPPORTED.get(name.lower())
        if known is not None:
            raise RuleSyntaxError(
                f"matcher {known} is not supported by the eventproxy data plane"
                " (supported: Host, Path, PathPrefix)"
            )
        raise RuleSyntaxError(f"unknown matcher {name!r}")
    if len(args) != 1:
        raise RuleSyntaxError(f"{canonical} takes exactly one argument, got {len(args)}")
    value = args[0]
    if canonical == HOST:
        return Matcher(HOST, _check_host(value))
    if not value:
        raise RuleSyntaxError(f"{canonical} needs a non-empty path")
    if not value.startswith("/"):
        raise RuleSyntaxError(f"{canonical} path {value!r} does not start with '/'")
    return Matcher(canonical, value)


def parse_rule(rule: str) -> Rule:
    """Parse a traefik v3 rule; raises :class:`RuleSyntaxError` naming what is wrong."""
    if not isinstance(rule, str):
        raise RuleSyntaxError(f"rule must be a string, not {type(rule).__name__}")
    return _Parser(rule).parse()


# -- printer -----------------------------------------------------------------------------------
def quote_rule_value(value: str) -> str:
    """A rule string literal that denotes exactly ``value``: backticks when that is exact, else
    a Go double-quoted string with ``\\xNN`` escapes."""
    if "`" not in value and "\r" not in value:
        return f"`{value}`"
    out = ['"']
    for b in value.encode("utf-8", "surrogateescape"):
        c = chr(b)
        if c in '"\\`' or b < 0x20 or b >= 0x7F:
            out.append(f"\\x{b:02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def format_rule(rule: Rule) -> str:
    """Canonical text for a rule tree; ``parse_rule(format_rule(t)) == t``."""
    if isinstance(rule, Matcher):
        return f"{rule.name}({quote_rule_value(rule.value)})"
    if isinstance(rule, Not):
        inner = format_rule(rule.operand)
        return f"!{inner}" if isinstance(rule.operand, Matcher | Not) else f"!({inner})"
    if isinstance(rule, And):
        parts = [_wrap(rule.left, Or), _wrap(rule.right, Or | And)]
        return " && ".join(parts)
    left = _wrap(rule.left, type(None))
    right = _wrap(rule.right, Or)
    return f"{left} || {right}"


def _wrap(rule: Rule, needs_parens: object) -> str:
    text = format_rule(rule)
    return f"({text})" if isinstance(rule, needs_parens) else text  # type: ignore[arg-type]


# -- evaluation --------------------------------------------------------------------------------
def host_matches(pattern: str, host: str | None) -> bool:
    """``pattern`` from a Host matcher; ``host`` canonical (lower-case, no port, no final dot)."""
    if host is None:
        return False
    if pattern.startswith("*."):
        first, dot, rest = host.partition(".")
        return bool(first) and bool(dot) and rest == pattern[2:]
    return host == pattern


def rule_segments(path: str) -> tuple[str, ...]:
    """``/a/b/`` -> ``("a", "b", "")``: the segments of a rule's path (already decoded)."""
    return tuple(path.split("/")[1:])


def path_matches(name: str, value: str, segments: tuple[str, ...]) -> bool:
    """Does ``Path``/``PathPrefix`` ``value`` match a request's decoded path segments?

    Equivalent to traefik comparing strings, with one difference in representation: a
    request's segments are split on the raw ``/`` only, so an encoded slash (``%2F``) is a
    character inside a segment and can never stand for a rule's ``/``.
    """
    want = rule_segments(value)
    if name == PATH:
        return segments == want
    head, tail = want[:-1], want[-1]
    n = len(head)
    return len(segments) > n and segments[:n] == head and segments[n].startswith(tail)


def matches(rule: Rule, host: str | None, segments: tuple[str, ...]) -> bool:
    """Evaluate ``rule`` for a request (canonical host, decoded path segments)."""
    if isinstance(rule, Matcher):
        if rule.name == HOST:
            return host_matches(rule.value, host)
        return path_matches(rule.name, rule.value, segments)
    if isinstance(rule, Not):
        return not matches(rule.operand, host, segments)
    if isinstance(rule, And):
        return matches(rule.left, host, segments) and matches(rule.right, host, segments)
    return matches(rule.left, host, segments) or matches(rule.right, host, segments)


Predicate = Callable[[str | None, tuple[str, ...]], bool]


def compile_rule(rule: Rule) -> Predicate:
    """``rule`` as a closure with the same meaning as :func:`matches`, without tree dispatch."""
    if isinstance(rule, Matcher):
        value = rule.value
        if rule.name == HOST:
            if value.startswith("*."):
                return lambda h, s: host_matches(value, h)
            return lambda h, s: h == value
        want = rule_segments(value)
        if rule.name == PATH:
            return lambda h, s: s == want
        head, tail, n = want[:-1], want[-1], len(want) - 1
        if not head:
            return lambda h, s: s[0].startswith(tail)
        return lambda h, s: len(s) > n and s[:n] == head and s[n].startswith(tail)
    if isinstance(rule, Not):
        inner = compile_rule(rule.operand)
        return lambda h, s: not inner(h, s)
    left, right = compile_rule(rule.left), compile_rule(rule.right)
    if isinstance(rule, And):
        return lambda h, s: left(h, s) and right(h, s)
    return lambda h, s: left(h, s) or right(h, s)
