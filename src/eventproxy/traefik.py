"""From routes to traefik dynamic configuration: names, rules, priorities. Pure functions.

* **Names.** Every route gets one router and one service, both named
  ``eventproxy-<escaped routespec>``. The escaping keeps ``A-Z a-z 0-9 -`` and writes every
  other UTF-8 byte as ``_xx`` (lower-case hex), so it is reversible
  (:func:`routespec_from_name`), injective (no two routespecs share a name) and safe in etcd keys,
  TOML keys and traefik's provider namespace (no ``/``, ``@`` or ``.``). The prefix marks
  eventproxy's own routers: anything else in the same configuration is not ours.
* **Rules.** ``(PathPrefix(`P/`) || Path(`P`))`` on the *decoded* routespec path ``P/`` (just
  ``PathPrefix(`/`)`` for the default route), plus ``Host`` for host-routing specs: a route
  ``P/`` routes the path ``P`` and every path under ``P/``, never ``P`` followed by anything
  else, and the comparison is what the pure-Python data plane does (it decodes request paths
  segment by segment).
  A value is written as a backtick string when it holds no backtick, else as a Go double-quoted
  string with ``\\xNN`` escapes; since routespec validation already refuses control characters,
  every routespec is represented exactly and nothing in it can end the string early. (traefik
  3.7 itself keeps reserved characters percent-encoded when matching; see docs/decisions.md for
  what a traefik projection must emit instead.)
* **Priority.** Explicit: ``2 * (bytes of the decoded path) + 1 if a host is given``, so the
  longest prefix wins and, for the same path, a host-specific route wins over a host-less one —
  in traefik and in the pure-Python data plane alike, whatever the rule text's length. Both
  halves of a rule carry the route's priority: ``/user/a/b`` matches ``/user/a/`` (prefix) and
  ``/user/a/b/`` (exact half), and the longer route wins.
"""

from __future__ import annotations

from typing import Any, Final

from eventproxy_dataplane import quote_rule_value

from .routespec import RouteSpec, parse_routespec
from .table import RouteEntry

__all__ = [
    "NAME_PREFIX",
    "dynamic_config",
    "name_for",
    "priority_for",
    "quote_rule_value",
    "routespec_from_name",
    "rule_for",
]

NAME_PREFIX: Final = "eventproxy-"
_SAFE: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")
_HEXDIGITS: Final = frozenset("0123456789abcdef")


def name_for(routespec: str) -> str:
    """The router/service name of a routespec (reversible, injective, key-safe)."""
    out = [NAME_PREFIX]
    for byte in routespec.encode("utf-8"):
        out.append(chr(byte) if byte in _SAFE else f"_{byte:02x}")
    return "".join(out)


def routespec_from_name(name: str) -> str | None:
    """The routespec a name was made from, or ``None`` if it is not one of our names."""
    if not name.startswith(NAME_PREFIX):
        return None
    body = name[len(NAME_PREFIX) :]
    raw = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "_":
            hexpart = body[i + 1 : i + 3]
            if len(hexpart) != 2 or not set(hexpart) <= _HEXDIGITS:
                return None
            byte = int(hexpart, 16)
            if byte in _SAFE:
                return None  # not canonical: we never escape a safe byte
            raw.append(byte)
            i += 3
        elif ord(ch) < 128 and ord(ch) in _SAFE:
            raw.append(ord(ch))
            i += 1
        else:
            return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def rule_for(spec: RouteSpec) -> str:
    """The traefik rule of a route: ``(PathPrefix(`P/`) || Path(`P`))``, with ``Host`` if given.

    A routespec ``P/`` routes the request path ``P`` itself and every path starting with ``P/``
    (``/user/a/b`` reaches the named server ``/user/a/b/``; ``/user/ab`` never reaches
    ``/user/a/``). The default route ``/`` is ``PathPrefix(`/`)``: it matches every path.
    """
    prefix = spec.decoded_path
    path = f"PathPrefix({quote_rule_value(prefix)})"
    if prefix != "/":
        path = f"({path} || Path({quote_rule_value(prefix[:-1])}))"
    if spec.host is None:
        return path
    return f"Host({quote_rule_value(spec.match_host or '')}) && {path}"


def priority_for(spec: RouteSpec) -> int:
    return 2 * len(spec.decoded_path.encode("utf-8")) + (1 if spec.host is not None else 0)


def router_config(entry: RouteEntry) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, router, service) for one route, in traefik's dynamic-configuration shape."""
    spec = parse_routespec(entry.routespec)
    name = name_for(entry.routespec)
    router = {"rule": rule_for(spec), "service": name, "priority": priority_for(spec)}
    service = {"loadBalancer": {"servers": [{"url": entry.target}], "passHostHeader": True}}
    return name, router, service


def dynamic_config(routes: list[RouteEntry] | Any) -> dict[str, Any]:
    """traefik's dynamic configuration (``{"http": {"routers", "services"}}``) for ``routes``."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for entry in routes:
        name, router, service = router_config(entry)
        routers[name] = router
        services[name] = service
    return {"http": {"routers": routers, "services": services}}
