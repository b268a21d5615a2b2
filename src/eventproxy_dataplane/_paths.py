"""Request targets and Host headers, reduced to what routing compares: a host and path segments.

Theory of operation: pure functions, on the hot path of every request. ``parse_target`` splits a
request-target as received (bytes, percent-encoded, maybe with ``?query``) into its decoded path
segments. The path is split on the *raw* ``/`` first and each segment is percent-decoded after,
so an encoded slash (``%2F``) stays a character inside its segment and can never act as a
separator: ``/user/alice%2Fx`` is the two segments ``user``, ``alice/x``. Every other
percent-encoding is decoded (``%24`` is ``$``, ``%C3%A9`` is ``é``, ``%23%3F`` is ``#?``), so a
rule written with the decoded path matches every spelling of it.

Dot segments and empty segments are resolved first, as traefik does by default (its
entrypoints' ``sanitizePath``, true in v3): ``sanitize_path`` removes ``.`` and ``..`` segments
(also spelled ``%2e``/``%2E``) and merges ``//`` like Go's ``path.Clean``, keeping a trailing
slash when the request had one, and leaves the query alone. The request is routed *and
forwarded* with that path, so the backend sees the path that was routed (measured against
traefik 3.7.15, ``tests/dataplane/test_differential_traefik.py``). An encoded slash is not a
separator there either: ``a%2F..%2Fb`` is one segment and stays.

Other targets a backend could resolve differently are refused (``None``; the server answers
404): a raw ``#``, bad percent-encodings, and anything that is not origin-form (``/...``) or
absolute-form (``http://host/...``). See ``docs/dataplane-rules.md``.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

__all__ = ["canonical_host", "parse_target", "sanitize_path"]

_BAD_PERCENT: Final = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_DOTS: Final = frozenset((".", ".."))


def _is_dot_segment(raw: bytes) -> int:
    """1 for ``.``, 2 for ``..`` (each dot raw or as ``%2e``/``%2E``), else 0."""
    if len(raw) > 6:
        return 0
    dots = raw.replace(b"%2e", b".").replace(b"%2E", b".")
    return len(dots) if dots in (b".", b"..") else 0


def sanitize_path(target: bytes) -> bytes:
    """An origin-form target with its path cleaned as traefik's ``sanitizePath`` cleans it.

    ``/a//b`` -> ``/a/b``, ``/a/./b`` -> ``/a/b``, ``/a/x/../b?q=/../`` -> ``/a/b?q=/../``,
    ``/a/%2e%2e/b`` -> ``/b``, ``/a/b/..`` -> ``/a``, ``/..`` -> ``/``; a trailing slash is kept
    when the path ended with one. Returns ``target`` itself (no copy) when there is nothing to
    clean -- the usual case, found with three substring searches.
    """
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    if not path.startswith(b"/") or (
        b"//" not in path and b"/." not in path and b"/%2" not in path
    ):
        return target
    kept: list[bytes] = []
    changed = False
    for raw in path[1:].split(b"/"):
        dots = _is_dot_segment(raw) if raw else -1
        if dots == 0:
            kept.append(raw)
            continue
        changed = True
        if dots == 2 and kept:
            kept.pop()
    if not changed:
        return target
    clean = b"/" + b"/".join(kept)
    if path.endswith(b"/") and not clean.endswith(b"/"):
        clean += b"/"
    return clean if q < 0 else clean + target[q:]


def _split_encoded_slashes(
    authority: str | None, path: bytes
) -> tuple[str | None, tuple[str, ...]] | None:
    """Split on the raw ``/`` first, then decode each segment: ``%2F`` stays inside."""
    raw_segments = path[1:].split(b"/")
    last = len(raw_segments) - 1
    decoded = []
    for i, raw in enumerate(raw_segments):
        if not raw and i < last:
            return None
        seg = unquote_to_bytes(raw).decode("utf-8", "surrogateescape")
        if seg in _DOTS:
            return None
        decoded.append(seg)
    return authority, tuple(decoded)


def parse_target(target: bytes) -> tuple[str | None, tuple[str, ...]] | None:
    """``(authority host or None, decoded path segments)`` or ``None`` for a refused target.

    ``b"/a/b/?q"`` -> ``(None, ("a", "b", ""))``; ``b"http://h:80/x"`` -> ``("h:80", ("x",))``.
    """
    authority: str | None = None
    if not target.startswith(b"/"):
        lowered = target[:8].lower()
        if lowered.startswith(b"http://"):
            rest = target[7:]
        elif lowered.startswith(b"https://"):
            rest = target[8:]
        else:
            return None
        slash = rest.find(b"/")
        query = rest.find(b"?")
        if slash < 0 or (0 <= query < slash):
            return None
        authority = rest[:slash].decode("latin-1")
        target = rest[slash:]
    target = sanitize_path(target)
    q = target.find(b"?")
    path = target if q < 0 else target[:q]
    if b"#" in path:
        return None
    if b"%" in path:
        if _BAD_PERCENT.search(path):
            return None
        if b"%2f" not in path and b"%2F" not in path:
            path = unquote_to_bytes(path)  # no encoded slash: decoding first splits the same
        else:
            return _split_encoded_slashes(authority, path)
    text = path.decode("utf-8", "surrogateescape")
    if "//" in text:
        return None
    segments = tuple(text[1:].split("/"))
    if "/." in text and (_DOTS & set(segments)):
        return None
    return authority, segments


_HOST_CACHE: dict[str, str | None] = {}
_HOST_CACHE_MAX: Final = 4096


def canonical_host(host: str | None) -> str | None:
    """Lower-case, without port and without one trailing dot: what ``Host(...)`` compares."""
    if host is None:
        return None
    cached = _HOST_CACHE.get(host, "")
    if cached != "":
        return cached
    if len(_HOST_CACHE) >= _HOST_CACHE_MAX:
        _HOST_CACHE.clear()
    result = _HOST_CACHE[host] = _canonical_host(host)
    return result


def _canonical_host(host: str) -> str | None:
    h = host.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        h = h[1:end] if end > 0 else h
    else:
        colon = h.rfind(":")
        if colon >= 0 and (colon == len(h) - 1 or h[colon + 1 :].isdigit()):
            h = h[:colon]
    if h.endswith("."):
        h = h[:-1]
    return h or None
