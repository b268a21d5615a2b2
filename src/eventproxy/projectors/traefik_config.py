"""What traefik sees: the projection of a routing table into traefik's dynamic configuration.

Pure functions, no I/O. The file projector writes :func:`toml_document`, the KV projector writes
the pairs of :func:`kv_pairs` (and plans its transactions with :mod:`.kv_plan`).

* **One router and one service per route**, both named :func:`eventproxy.traefik.name_for` (the
  reversible escaping of the routespec).
* **Rules that traefik 3.7 routes like every other plane.** Traefik matches a request on a path
  in which the percent-escapes of RFC 3986 reserved characters (``: / ? # [ ] @ ! $ & ' ( ) * +
  , ; =`` and ``%``) are kept, hex upper-cased, and every other escape is decoded
  (``docs/dataplane-rules.md``). A rule therefore carries two spellings of the route's path:
  JupyterHub's own spelling as traefik normalises it (``/user/walnut/%24p~c|a%21 ch@rs``), and
  the all-raw spelling (``/user/walnut/$p~c|a! ch@rs``), which is also what the pure-Python data
  plane matches. Each spelling ``P`` gives ``PathPrefix(`P/`) || Path(`P`)``: the routespec
  ``P/`` routes ``P`` and everything under ``P/``, never ``P`` followed by anything else
  (``docs/routespecs.md``). Values are quoted with :func:`quote_rule_value`, so nothing in a
  routespec can end a string or add an operator.
* **Priority** is :func:`eventproxy.traefik.priority_for` (explicit, from the decoded path).
* **The applied seq** is carried by a marker router, ``eventproxy-_applied``, whose rule is
  ``Host(`<seq>.seq.eventproxy.invalid`)``: a host that never resolves, so it never routes a
  request, and that traefik's API shows like any router -- which is how a replica is asked which
  seq it routes (one request per replica, whatever the burst size). The marker's name starts
  with eventproxy's prefix but is no routespec's name (``_ap`` is not an escape).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

import tomli_w

from ..routespec import RouteSpec, parse_routespec
from ..table import RouteEntry, RouteTable
from ..traefik import NAME_PREFIX, name_for, priority_for, quote_rule_value

__all__ = [
    "MARKER",
    "PARTIAL_PREFIX",
    "dynamic_document",
    "kv_pairs",
    "marker_rule",
    "parse_toml_document",
    "route_config",
    "route_kv",
    "route_prefixes",
    "seq_from_marker_rule",
    "toml_document",
    "traefik_rule",
    "traefik_spelling",
]

MARKER: Final = NAME_PREFIX + "_applied"
#: the marker service's server: the discard port on loopback, never reached (the rule never matches)
MARKER_URL: Final = "http://127.0.0.1:9"
PARTIAL_PREFIX: Final = "partial-"
_MARKER_HOST = re.compile(r"^Host\(`(\d+)\.seq\.eventproxy\.invalid`\)$")
RESERVED: Final = frozenset(":/?#[]@!$&'()*+,;=%")
_HEX: Final = "0123456789ABCDEF"


def traefik_spelling(raw_path: str) -> str:
    """``raw_path`` (a validated routespec path) as traefik 3.7 normalises a request path.

    Escapes of reserved characters stay escaped (upper-case hex), all other escapes are
    decoded (UTF-8); raw characters stay as they are.
    """
    out: list[str] = []
    pending = bytearray()

    def flush() -> None:
        if pending:
            out.append(pending.decode("utf-8"))
            pending.clear()

    i = 0
    while i < len(raw_path):
        ch = raw_path[i]
        if ch == "%":
            byte = int(raw_path[i + 1 : i + 3], 16)
            if byte < 0x80 and chr(byte) in RESERVED:
                flush()
                out.append("%" + _HEX[byte >> 4] + _HEX[byte & 15])
            else:
                pending.append(byte)
            i += 3
        else:
            flush()
            out.append(ch)
            i += 1
    flush()
    return "".join(out)


def _path_matchers(path: str) -> list[str]:
    """``PathPrefix(`P/`) || Path(`P`)`` for a path ``P/`` (just ``PathPrefix(`/`)`` for ``/``)."""
    if path == "/":
        return [f"PathPrefix({quote_rule_value('/')})"]
    return [f"PathPrefix({quote_rule_value(path)})", f"Path({quote_rule_value(path[:-1])})"]


def traefik_rule(spec: RouteSpec) -> str:
    """The rule that routes ``spec`` in traefik 3.7 and in the pure-Python data plane alike."""
    spellings = [traefik_spelling(spec.path)]
    if spec.decoded_path not in spellings:
        spellings.append(spec.decoded_path)
    matchers: list[str] = []
    for spelling in spellings:
        matchers.extend(_path_matchers(spelling))
    paths = " || ".join(matchers)
    if spec.host is None:
        return paths
    host = f"Host({quote_rule_value(spec.match_host or '')})"
    return f"{host} && ({paths})" if len(matchers) > 1 else f"{host} && {paths}"


def route_config(entry: RouteEntry) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(name, router, service) of one route in traefik's dynamic-configuration shape."""
    spec = parse_routespec(entry.routespec)
    name = name_for(entry.routespec)
    router = {"rule": traefik_rule(spec), "service": name, "priority": priority_for(spec)}
    service = {"loadBalancer": {"servers": [{"url": entry.target}], "passHostHeader": True}}
    return name, router, service


# -- the applied-seq marker -------------------------------------------------------------------
def marker_rule(seq: int) -> str:
    return f"Host(`{seq}.seq.eventproxy.invalid`)"


def partial_marker_rule(seq: int, part: int) -> str:
    """The marker while a re-projection too large for one transaction is half written."""
    return f"Host(`{PARTIAL_PREFIX}{part}-{seq}.seq.eventproxy.invalid`)"


def seq_from_marker_rule(rule: object) -> int | None:
    """The seq a marker rule carries, or ``None`` (not a marker, or a partial write)."""
    if not isinstance(rule, str):
        return None
    match = _MARKER_HOST.match(rule)
    return int(match.group(1)) if match else None


def _marker(seq: int) -> tuple[dict[str, Any], dict[str, Any]]:
    router = {"rule": marker_rule(seq), "service": MARKER, "priority": 1}
    service = {"loadBalancer": {"servers": [{"url": MARKER_URL}]}}
    return router, service


# -- file provider ----------------------------------------------------------------------------
def dynamic_document(table: RouteTable) -> dict[str, Any]:
    """traefik's dynamic configuration for ``table``, the applied-seq marker included."""
    routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for entry in sorted(table.values(), key=lambda e: e.routespec):
        name, router, service = route_config(entry)
        routers[name] = router
        services[name] = service
    routers[MARKER], services[MARKER] = _marker(table.seq)
    return {"http": {"routers": routers, "services": services}}


_HEADER = (
    "# traefik file-provider configuration written by eventproxy's file projector.\n"
    "# Generated from the route log: do not edit (`eventproxy verify --repair` rewrites it).\n"
    "# applied_seq = {seq}\n"
)


def toml_document(table: RouteTable) -> str:
    """The file projector's whole file for ``table`` (deterministic: same table, same text)."""
    return _HEADER.format(seq=table.seq) + tomli_w.dumps(dynamic_document(table))


def _table_at(doc: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def parse_toml_document(text: str) -> tuple[dict[str, dict[str, Any]], int | None]:
    """(our routers by name -> {rule, service, priority, url}, applied seq) from a file.

    Raises ``ValueError`` if ``text`` is not TOML. Routers that are not ours are left out.
    """
    import tomllib

    doc = tomllib.loads(text)
    http = _table_at(doc, "http")
    routers = _table_at(http, "routers")
    services = _table_at(http, "services")
    seq = None
    marker = routers.get(MARKER)
    if isinstance(marker, dict):
        seq = seq_from_marker_rule(marker.get("rule"))
    out: dict[str, dict[str, Any]] = {}
    for name, router in routers.items():
        if name == MARKER or not name.startswith(NAME_PREFIX) or not isinstance(router, dict):
            continue
        service = services.get(str(router.get("service")))
        url = None
        if isinstance(service, dict):
            servers = service.get("loadBalancer", {}).get("servers", [])
            if isinstance(servers, list) and servers and isinstance(servers[0], dict):
                url = servers[0].get("url")
        out[name] = {
            "rule": router.get("rule"),
            "service": router.get("service"),
            "priority": router.get("priority"),
            "url": url,
        }
    return out, seq


# -- KV layout --------------------------------------------------------------------------------
def route_kv(entry: RouteEntry, root: str) -> dict[str, str]:
    """The keys of one route in traefik's KV layout under ``root``."""
    name, router, _ = route_config(entry)
    r = f"{root}/http/routers/{name}/"
    s = f"{root}/http/services/{name}/"
    return {
        r + "rule": router["rule"],
        r + "service": name,
        r + "priority": str(router["priority"]),
        s + "loadBalancer/servers/0/url": entry.target,
        s + "loadBalancer/passHostHeader": "true",
    }


def marker_key(root: str) -> str:
    return f"{root}/http/routers/{MARKER}/rule"


def marker_kv(root: str, rule: str) -> dict[str, str]:
    return {
        marker_key(root): rule,
        f"{root}/http/routers/{MARKER}/service": MARKER,
        f"{root}/http/routers/{MARKER}/priority": "1",
        f"{root}/http/services/{MARKER}/loadBalancer/servers/0/url": MARKER_URL,
    }


def route_prefixes(routespec: str, root: str) -> tuple[str, str]:
    """The router and service key prefixes of a route (a range delete removes each whole)."""
    name = name_for(routespec)
    return f"{root}/http/routers/{name}/", f"{root}/http/services/{name}/"


def kv_pairs(
    table: RouteTable | Iterable[RouteEntry], root: str, seq: int | None = None
) -> dict[str, str]:
    """Every key eventproxy owns under ``root`` for ``table`` (the marker at its seq included)."""
    pairs: dict[str, str] = {}
    entries = table.values() if isinstance(table, RouteTable) else table
    for entry in entries:
        pairs.update(route_kv(entry, root))
    if seq is None:
        seq = table.seq if isinstance(table, RouteTable) else 0
    pairs.update(marker_kv(root, marker_rule(seq)))
    return pairs


def is_our_key(key: str, root: str) -> bool:
    """Is ``key`` under one of eventproxy's routers or services (the marker's included)?"""
    for kind in ("routers", "services"):
        head = f"{root}/http/{kind}/"
        if key.startswith(head):
            return key[len(head) :].startswith(NAME_PREFIX)
    return False


def our_pairs(pairs: Mapping[str, str], root: str) -> dict[str, str]:
    return {k: v for k, v in pairs.items() if is_our_key(k, root)}
