"""Routespecs: what a route matches, validated so that every plane routes it exactly.

A routespec is JupyterHub's key for a route: ``/path/`` (path routing) or ``host/path/`` (host
routing). A routespec ``P/`` routes the requests whose path is ``P`` or starts with ``P/`` (never
``P`` followed by anything else; the longest matching route wins). eventproxy accepts a routespec
only when every plane (traefik rules, the pure-Python data plane, the in-memory table) can route
*exactly* those requests; ``traefik.rule_for`` writes the rule all planes evaluate.

The policy (``docs/routespecs.md`` explains it for users):

* The path is an RFC 3986 absolute path: raw characters are unreserved, sub-delims, ``:``,
  ``@``, ``/``, percent-escapes, or non-ASCII text. Anything else raw is refused: space, ``"``,
  ``<``, ``>``, ``\\``, ``^``, backtick, ``{``, ``|``, ``}``, ``[``, ``]``, ``?``, ``#``, control
  characters. That alone makes it impossible for a routespec to end a quoted traefik string or
  to inject ``||``, parentheses or braces into a rule.
* Every percent-escape is well formed and decodes to UTF-8 text; the decoded text contains no
  control character (CR, LF, TAB, NUL, DEL, C1), no ``/`` (``%2F``) and no ``\\`` (``%5C``).
* No dot segment (``.``, ``..``, also spelled ``%2E``) and no empty *last* segment (``/user//``:
  without its trailing slash that is ``/user/``, the path of another route).
* An empty segment elsewhere (JupyterHub's own ``example.com//has%20space/foo/``) is accepted,
  stored and listed byte-identical, and matched *literally*: it routes the requests whose
  decoded path has the same segments, the empty one included, never a normalised form, so it
  can capture nobody else's traffic. No plane routes such a request today -- the data plane
  refuses request paths with an empty segment (404) and traefik merges ``//`` before routing --
  so such a route is reachable by no request, identically in every plane.
* A trailing slash is added when missing, as JupyterHub does.
* A host part is a DNS name (letters, digits, ``-``, ``.``), no port, no userinfo. It is matched
  case-insensitively, like traefik's ``Host`` matcher, and kept as written.

Matching compares *decoded* paths: the routespec ``/user/walnut/%24p~c%7Ca%21%20ch@rs/`` matches
requests for ``/user/walnut/%24p~c%7Ca%21%20ch@rs/lab`` and for ``/user/walnut/$p~c|a!%20ch@rs/lab``
alike, because both decode to the same text; this is what traefik's ``PathPrefix`` does with Go's
decoded ``URL.Path`` and what the pure-Python data plane does too.

This module is pure: no I/O, no state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote_to_bytes

from ._errors import InvalidRoutespecError

__all__ = ["RouteSpec", "parse_routespec", "validate_routespec"]

# RFC 3986 pchar minus pct-encoded, plus "/" (we check escapes separately).
_UNRESERVED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
_SUB_DELIMS = "!$&'()*+,;="
_RAW_PATH_OK = frozenset(_UNRESERVED + _SUB_DELIMS + ":@/%")
_HOST_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_HEX = frozenset("0123456789abcdefABCDEF")
# The common case, checked in one regex: a path of plain segments with no escapes, where no
# segment is "." or "..". Anything else takes the full, character-by-character check.
_PLAIN_PATH = re.compile(r"^/(?:(?!\.{1,2}/)[A-Za-z0-9\-._~!$&'()*+,;=:@]+/)*$")
_MAX_LENGTH = 4096

_FORBIDDEN_NAMES = {
    " ": "a space",
    '"': "a double quote",
    "<": "'<'",
    ">": "'>'",
    "\\": "a backslash",
    "^": "'^'",
    "`": "a backtick",
    "{": "a brace",
    "}": "a brace",
    "|": "'|'",
    "[": "a square bracket",
    "]": "a square bracket",
    "?": "a raw '?' (a query string is not part of a route)",
    "#": "a raw '#' (a fragment is not part of a route)",
}


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A validated routespec.

    ``raw`` is the routespec as stored and returned to JupyterHub (trailing slash added);
    ``host`` is ``None`` for path routing; ``path`` is the raw (still percent-escaped) path;
    ``decoded_path`` is the path with every escape decoded: what requests are matched against.
    """

    raw: str
    host: str | None
    path: str
    decoded_path: str

    @property
    def reachable(self) -> bool:
        """False for a path with an empty segment: stored and listed, but no plane routes a
        request with an empty segment (see the module docstring)."""
        return "//" not in self.decoded_path

    @property
    def match_host(self) -> str | None:
        """The host as matched (lower case), or ``None`` for path routing."""
        return None if self.host is None else self.host.lower()


def _describe(ch: str) -> str:
    if ch in _FORBIDDEN_NAMES:
        return _FORBIDDEN_NAMES[ch]
    return f"the control character U+{ord(ch):04X}"


def _is_control(ch: str) -> bool:
    code = ord(ch)
    return code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0


def _check_host(spec: str, host: str) -> None:
    if not host:
        raise InvalidRoutespecError(f"routespec {spec!r}: empty host part")
    if ":" in host:
        raise InvalidRoutespecError(
            f"routespec {spec!r}: host {host!r} carries a port; routes match hosts without ports"
        )
    if "@" in host:
        raise InvalidRoutespecError(f"routespec {spec!r}: host {host!r} carries userinfo ('@')")
    if len(host) > 253:
        raise InvalidRoutespecError(f"routespec {spec!r}: host is longer than 253 characters")
    for label in host.split("."):
        if not _HOST_LABEL.match(label):
            raise InvalidRoutespecError(
                f"routespec {spec!r}: host {host!r} has an invalid label {label!r} "
                "(letters, digits and inner '-' only)"
            )


def _check_raw_path(spec: str, path: str, offset: int) -> None:
    for i, ch in enumerate(path):
        if ch in _RAW_PATH_OK or (ord(ch) >= 0xA0 and ch.isprintable()):
            continue
        if _is_control(ch) or not ch.isprintable():
            raise InvalidRoutespecError(
                f"routespec {spec!r}: {_describe(ch)} at position {offset + i}; control "
                "characters are never routable, raw or percent-escaped"
            )
        raise InvalidRoutespecError(
            f"routespec {spec!r}: {_describe(ch)} at position {offset + i} cannot be routed "
            "exactly; percent-escape it as JupyterHub does"
        )


def _decode_segment(spec: str, segment: str) -> str:
    i = segment.find("%")
    while i != -1:
        escape = segment[i + 1 : i + 3]
        if len(escape) != 2 or not set(escape) <= _HEX:
            raise InvalidRoutespecError(
                f"routespec {spec!r}: malformed percent-escape {segment[i : i + 3]!r} in "
                f"segment {segment!r}"
            )
        i = segment.find("%", i + 3)
    try:
        decoded = unquote_to_bytes(segment).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRoutespecError(
            f"routespec {spec!r}: segment {segment!r} does not decode to UTF-8 text"
        ) from None
    for ch in decoded:
        if ch == "/":
            raise InvalidRoutespecError(
                f"routespec {spec!r}: encoded slash (%2F) in segment {segment!r}; "
                "it would be routed as a path separator by some proxies and not by others"
            )
        if ch == "\\":
            raise InvalidRoutespecError(
                f"routespec {spec!r}: encoded backslash (%5C) in segment {segment!r}"
            )
        if _is_control(ch):
            raise InvalidRoutespecError(
                f"routespec {spec!r}: segment {segment!r} encodes the control character "
                f"U+{ord(ch):04X}"
            )
    if decoded in (".", ".."):
        raise InvalidRoutespecError(
            f"routespec {spec!r}: dot segment {segment!r}; proxies resolve it to another path"
        )
    return decoded


def parse_routespec(spec: object, *, host_routing: bool | None = None) -> RouteSpec:
    """Validate ``spec`` and return it parsed; raise :class:`InvalidRoutespecError` naming why.

    ``host_routing`` (when not ``None``) also enforces the proxy's routing mode, as JupyterHub
    does: with host routing a routespec must start with a host, without it with ``/``.
    """
    if not isinstance(spec, str):
        raise InvalidRoutespecError(f"routespec must be a str, not {type(spec).__name__}")
    if host_routing is not True and _PLAIN_PATH.match(spec):
        return RouteSpec(raw=spec, host=None, path=spec, decoded_path=spec)
    return _parse_cached(spec, host_routing)


@lru_cache(maxsize=16384)
def _parse_cached(spec: str, host_routing: bool | None) -> RouteSpec:
    if not spec:
        raise InvalidRoutespecError("routespec is empty")
    if len(spec) > _MAX_LENGTH:
        raise InvalidRoutespecError(f"routespec is longer than {_MAX_LENGTH} characters")
    if spec.startswith("/"):
        host, path, path_offset = None, spec, 0
    else:
        slash = spec.find("/")
        if slash == -1:
            raise InvalidRoutespecError(
                f"routespec {spec!r}: must be '/path/' or 'host/path/'; no '/' found"
            )
        host, path, path_offset = spec[:slash], spec[slash:], slash
        for i, ch in enumerate(host):
            if _is_control(ch) or ch in _FORBIDDEN_NAMES:
                raise InvalidRoutespecError(
                    f"routespec {spec!r}: {_describe(ch)} at position {i} in the host part"
                )
        _check_host(spec, host)
    if host_routing is True and host is None and spec != "/":
        # "/" is JupyterHub's default (hub) route, valid in both routing modes.
        raise InvalidRoutespecError(
            f"routespec {spec!r}: host routing is enabled, so a routespec must start with a host "
            "('host.example.com/path/')"
        )
    if host_routing is False and host is not None:
        raise InvalidRoutespecError(
            f"routespec {spec!r}: host routing is disabled, so a routespec must start with '/'"
        )
    _check_raw_path(spec, path, path_offset)
    if not path.endswith("/"):
        path += "/"
    segments = path[1:-1].split("/") if path != "/" else []
    if segments and segments[-1] == "":
        raise InvalidRoutespecError(
            f"routespec {spec!r}: empty last path segment ('//' at the end); without its "
            f"trailing slash it would be {(host or '') + path[:-1]!r}, another route's path"
        )
    decoded = []
    for segment in segments:
        # An empty segment elsewhere is kept and matched literally (see the module docstring).
        decoded.append(_decode_segment(spec, segment) if segment else "")
    decoded_path = "/" + "".join(s + "/" for s in decoded)
    raw = path if host is None else host + path
    return RouteSpec(raw=raw, host=host, path=path, decoded_path=decoded_path)


def validate_routespec(spec: object, *, host_routing: bool | None = None) -> str:
    """The normalised routespec string (trailing slash added), or :class:`InvalidRoutespecError`."""
    if host_routing is not True and type(spec) is str and _PLAIN_PATH.match(spec):
        return spec
    return parse_routespec(spec, host_routing=host_routing).raw
