"""The routing table: which router (and service) serves a request, as traefik would pick it.

Theory of operation. Traefik evaluates routers in priority order (highest first; the default
priority is the rule's length in bytes) and the first match wins. Evaluating every rule per
request costs O(routes); this table gets the same answer with a lookup whose cost does not grow
with the number of routes:

* Rules of the *fast shape* -- after distributing ``||`` over ``&&`` (no ``!``), every term is
  at most one ``Host`` and at most one ``Path``/``PathPrefix`` -- are compiled into placements
  in per-host segment tries (plus one trie for rules without ``Host``, and one per ``*.domain``
  wildcard). A ``PathPrefix(`/a/b/c`)`` is stored at node ``a -> b`` under the partial segment
  ``c`` (it matches when the request's next segment starts with ``c``); ``PathPrefix(`/a/`)``
  has the empty partial segment; ``Path(`/a/b`)`` is an exact entry at node ``a -> b``.
  A lookup walks the request's decoded segments once in each of at most three tries.
* Other rules (``!``, mixed shapes) go to a small fallback list sorted by priority. After the
  trie walk, fallback rules are evaluated in order only while they outrank the best trie
  candidate, so the merge respects priority exactly.

Ties: traefik sorts routers by priority (then by provider precedence) with an unstable sort over
routers gathered from a Go map, so which of two equal-priority matching routers wins is not
defined there. Here it is: the router whose name sorts first (Python ``str`` order) wins. Every
candidate carries the key ``(-priority, name)`` and the smallest key wins.

``apply`` is incremental and synchronous: it parses every upsert first (nothing changes if the
batch is refused piecewise: bad routers are reported and disabled), then mutates the tries; on
one event loop a lookup therefore sees either the whole batch or none of it. ``Route`` values
are immutable, so requests in flight keep the route they were given.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from ._config import ConfigProblem, DynamicConfig, RouterSpec, ServiceSpec
from ._errors import RuleSyntaxError
from ._paths import canonical_host, parse_target
from ._rules import (
    HOST,
    PATH,
    And,
    Matcher,
    Not,
    Or,
    Predicate,
    Rule,
    compile_rule,
    matches,
    parse_rule,
    rule_segments,
)

__all__ = ["Route", "RoutingTable"]

_MAX_TERMS: Final = 32
_ANY_HOST: Final = ""  # trie key for rules without Host (a canonical host is never "")


@dataclass(frozen=True, slots=True)
class Route:
    """What a lookup returns: the router that matched and the service to send the request to."""

    router: str
    service: ServiceSpec


_Key = tuple[int, str]  # (-priority, router name): smallest wins
_Cand = tuple[_Key, Route]


@dataclass(slots=True)
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    tails: dict[str, list[_Cand]] = field(default_factory=dict)  # PathPrefix partial segments
    exact: list[_Cand] = field(default_factory=list)  # Path ending here

    def empty(self) -> bool:
        return not (self.children or self.tails or self.exact)


@dataclass(frozen=True, slots=True)
class _Placement:
    host: str  # trie key: canonical host, "*.domain", or _ANY_HOST
    exact: bool  # Path (exact) or PathPrefix
    segments: tuple[str, ...]  # node path; for a prefix, the last element is the partial tail


@dataclass(frozen=True, slots=True)
class _Compiled:
    spec: RouterSpec
    rule: Rule
    key: _Key
    placements: tuple[_Placement, ...] | None  # None: goes to the fallback list


def _dnf(rule: Rule) -> list[list[Matcher]] | None:
    """Disjunctive normal form of a rule without ``!``; None if it has ``!`` or is too big."""
    if isinstance(rule, Matcher):
        return [[rule]]
    if isinstance(rule, Not):
        return None
    left, right = _dnf(rule.left), _dnf(rule.right)
    if left is None or right is None:
        return None
    if isinstance(rule, Or):
        out = left + right
    else:
        assert isinstance(rule, And)
        out = [a + b for a in left for b in right]
    return out if len(out) <= _MAX_TERMS else None


def _plan(rule: Rule) -> tuple[_Placement, ...] | None:
    terms = _dnf(rule)
    if terms is None:
        return None
    placements: list[_Placement] = []
    for term in terms:
        hosts = {m.value for m in term if m.name == HOST}
        paths = {(m.name, m.value) for m in term if m.name != HOST}
        if len(hosts) > 1:
            if any(h.startswith("*.") for h in hosts):
                return None  # a wildcard and another host may both hold: evaluate it
            continue  # two different host names can never both match: the term is dead
        if len(paths) > 1:
            return None
        host = next(iter(hosts)) if hosts else _ANY_HOST
        name, value = next(iter(paths)) if paths else ("PathPrefix", "/")
        placements.append(_Placement(host, name == PATH, rule_segments(value)))
    return tuple(dict.fromkeys(placements))


def _insort(items: list[_Cand], cand: _Cand) -> None:
    keys = [c[0] for c in items] if len(items) > 8 else None
    if keys is None:
        items.append(cand)
        items.sort(key=lambda c: c[0])
    else:
        items.insert(bisect.bisect(keys, cand[0]), cand)


def _remove(items: list[_Cand], name: str) -> None:
    items[:] = [c for c in items if c[0][1] != name]


class RoutingTable:
    """Routers compiled for fast lookup; see the module docstring for the structure."""

    def __init__(self) -> None:
        self._tries: dict[str, _Node] = {}
        self._fallback: list[tuple[_Key, Predicate, Route]] = []
        self._installed: dict[str, _Compiled] = {}
        self._routes: dict[str, Route] = {}
        # rule text -> parsed rule and trie placements (immutable values): a router re-added
        # with the rule it had (a user's next server) is not parsed again. Bounded: cleared when
        # it outgrows the table.
        self._parsed: dict[str, tuple[Rule, tuple[_Placement, ...] | None]] = {}

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def build(cls, config: DynamicConfig) -> tuple[RoutingTable, list[ConfigProblem]]:
        """A table for a whole config; routers that cannot be used are reported, not raised."""
        table = cls()
        problems: list[ConfigProblem] = []
        upserts: list[tuple[RouterSpec, ServiceSpec]] = []
        for name in sorted(config.routers):
            spec = config.routers[name]
            service = config.services.get(spec.service)
            if service is None:
                problems.append(
                    ConfigProblem(
                        f"http.routers.{name}.service",
                        f"service {spec.service!r} does not exist; router {name!r} disabled",
                    )
                )
                continue
            upserts.append((spec, service))
        problems += table.apply(upserts, ())
        return table, problems

    def _compile(self, spec: RouterSpec) -> _Compiled:
        installed = self._installed.get(spec.name)
        if installed is not None and installed.spec == spec:
            return installed  # the same router (a new service for it): nothing to parse
        key = (-spec.effective_priority, spec.name)
        parsed = self._parsed.get(spec.rule)
        if parsed is None:
            rule = parse_rule(spec.rule)
            parsed = self._parsed[spec.rule] = (rule, _plan(rule))
        return _Compiled(spec, parsed[0], key, parsed[1])

    def apply(
        self, upserts: Iterable[tuple[RouterSpec, ServiceSpec]], removals: Iterable[str]
    ) -> list[ConfigProblem]:
        """Remove routers by name, then add or replace routers; all before returning.

        A router whose rule cannot be used is reported and disabled (an older version of it is
        removed, like traefik disables it). Never raises for bad input.
        """
        problems: list[ConfigProblem] = []
        ready: dict[str, tuple[_Compiled, Route]] = {}
        disabled: list[str] = []
        for spec, service in upserts:
            try:
                if not isinstance(spec, RouterSpec) or not isinstance(service, ServiceSpec):
                    raise TypeError("expected (RouterSpec, ServiceSpec)")
                compiled = self._compile(spec)
            except (RuleSyntaxError, TypeError, RecursionError) as exc:
                name = getattr(spec, "name", repr(spec))
                problems.append(
                    ConfigProblem(f"http.routers.{name}.rule", f"router {name!r} disabled: {exc}")
                )
                disabled.append(name)
                ready.pop(name, None)
                continue
            ready[spec.name] = (compiled, Route(spec.name, service))
        for name in [*removals, *disabled]:
            self._uninstall(name)
        for compiled, route in ready.values():
            if self._installed.get(compiled.spec.name) is compiled:
                self._replace(compiled, route)  # same rule and priority: swap the route only
            else:
                self._uninstall(compiled.spec.name)
                self._install(compiled, route)
        if len(self._parsed) > 2 * len(self._installed) + 4096:
            self._parsed.clear()  # bounded (checked after the batch: it may be a bulk load)
        return problems

    def _replace(self, compiled: _Compiled, route: Route) -> None:
        """Give the installed router ``compiled`` a new route (service), where it stands."""
        name = compiled.spec.name
        self._routes[name] = route
        cand: _Cand = (compiled.key, route)
        if compiled.placements is None:
            for i, entry in enumerate(self._fallback):
                if entry[0][1] == name:
                    self._fallback[i] = (entry[0], entry[1], route)
            return
        for p in compiled.placements:
            node = self._tries[p.host]
            for seg in p.segments if p.exact else p.segments[:-1]:
                node = node.children[seg]
            items = node.exact if p.exact else node.tails[p.segments[-1]]
            for i, item in enumerate(items):
                if item[0][1] == name:
                    items[i] = cand

    def _install(self, compiled: _Compiled, route: Route) -> None:
        name = compiled.spec.name
        self._installed[name] = compiled
        self._routes[name] = route
        cand: _Cand = (compiled.key, route)
        if compiled.placements is None:
            entry = (compiled.key, compile_rule(compiled.rule), route)
            keys = [e[0] for e in self._fallback]
            self._fallback.insert(bisect.bisect(keys, compiled.key), entry)
            return
        for p in compiled.placements:
            node = self._tries.get(p.host)
            if node is None:
                node = self._tries[p.host] = _Node()
            walk = p.segments if p.exact else p.segments[:-1]
            for seg in walk:
                child = node.children.get(seg)
                if child is None:
                    child = node.children[seg] = _Node()
                node = child
            if p.exact:
                _insort(node.exact, cand)
            else:
                _insort(node.tails.setdefault(p.segments[-1], []), cand)

    def _uninstall(self, name: str) -> None:
        compiled = self._installed.pop(name, None)
        self._routes.pop(name, None)
        if compiled is None:
            return
        if compiled.placements is None:
            self._fallback = [e for e in self._fallback if e[0][1] != name]
            return
        for p in compiled.placements:
            root = self._tries.get(p.host)
            if root is None:
                continue
            walk = p.segments if p.exact else p.segments[:-1]
            trail = [root]
            for seg in walk:
                child = trail[-1].children.get(seg)
                if child is None:
                    break
                trail.append(child)
            else:
                node = trail[-1]
                if p.exact:
                    _remove(node.exact, name)
                else:
                    tail = p.segments[-1]
                    items = node.tails.get(tail)
                    if items is not None:
                        _remove(items, name)
                        if not items:
                            del node.tails[tail]
                for depth in range(len(walk), 0, -1):  # prune empty nodes bottom-up
                    if not trail[depth].empty():
                        break
                    del trail[depth - 1].children[walk[depth - 1]]
                if root.empty():
                    del self._tries[p.host]

    # -- queries ---------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._installed)

    def __contains__(self, name: object) -> bool:
        return name in self._installed

    def routers(self) -> dict[str, RouterSpec]:
        return {name: c.spec for name, c in self._installed.items()}

    def route(self, name: str) -> Route | None:
        """The installed router ``name`` and its service, or None."""
        return self._routes.get(name)

    def lookup(self, host: str | None, target: bytes) -> Route | None:
        """The route for a request, or None (no router matches, or the target is refused).

        ``host`` is the Host header value (any case, maybe with a port); ``target`` the raw
        request-target (percent-encoded, maybe with a query; absolute-form is accepted and its
        authority then wins over ``host``).
        """
        parsed = parse_target(target)
        if parsed is None:
            return None
        authority, segments = parsed
        h = canonical_host(authority if authority is not None else host)
        best: _Cand | None = None
        tries = self._tries
        if h is not None:
            node = tries.get(h)
            if node is not None:
                best = _walk(node, segments, best)
            dot = h.find(".")
            if dot > 0:
                node = tries.get("*" + h[dot:])
                if node is not None:
                    best = _walk(node, segments, best)
        node = tries.get(_ANY_HOST)
        if node is not None:
            best = _walk(node, segments, best)
        for key, predicate, route in self._fallback:
            if best is not None and key >= best[0]:
                break
            if predicate(h, segments):
                return route
        return None if best is None else best[1]

    def brute_force_lookup(self, host: str | None, target: bytes) -> Route | None:
        """Reference semantics: evaluate every rule in priority order (slow; for tests)."""
        parsed = parse_target(target)
        if parsed is None:
            return None
        authority, segments = parsed
        h = canonical_host(authority if authority is not None else host)
        for c in sorted(self._installed.values(), key=lambda c: c.key):
            if matches(c.rule, h, segments):
                return self._routes[c.spec.name]
        return None


def _walk(node: _Node, segments: tuple[str, ...], best: _Cand | None) -> _Cand | None:
    for seg in segments:
        tails = node.tails
        if tails:
            if len(tails) <= len(seg) + 1:
                for tail, items in tails.items():
                    if seg.startswith(tail) and (best is None or items[0][0] < best[0]):
                        best = items[0]
            else:
                for i in range(len(seg) + 1):
                    items = tails.get(seg[:i])  # type: ignore[assignment]
                    if items and (best is None or items[0][0] < best[0]):
                        best = items[0]
        child = node.children.get(seg)
        if child is None:
            return best
        node = child
    if node.exact and (best is None or node.exact[0][0] < best[0]):
        best = node.exact[0]
    return best
