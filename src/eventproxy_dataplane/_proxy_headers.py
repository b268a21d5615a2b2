"""Pure header rewriting for the reverse proxy: values in, values out, no I/O.

Request side (client -> backend):
- hop-by-hop fields are dropped: ``Connection``, ``Keep-Alive``, ``Proxy-*``, ``TE``,
  ``Trailer``, ``Upgrade`` (kept, with ``Connection: upgrade``, for a WebSocket upgrade) and every
  field named in ``Connection``. ``Transfer-Encoding: chunked`` stays: h11 frames the backend
  request with it (h11 has already refused any other coding).
- ``X-Forwarded-For/Proto/Host/Port`` and ``X-Real-Ip`` sent by the client are replaced (the
  client is not trusted, as in traefik's default), then set from the connection. A client in
  ``forwarded_trusted_ips`` (a proxy in front of us) keeps its values, and its address is
  appended to ``X-Forwarded-For`` (traefik's ``forwardedHeaders.trustedIPs``).
- ambiguous framing is refused here, before any backend sees the request: ``Content-Length``
  together with ``Transfer-Encoding``, a ``Content-Length`` above 2^63-1 (h11 accepts 20 digits;
  a backend whose length parser wraps at 64 bits would read the body as a second request), more
  than one ``Host`` or one that is not ``host[:port]`` (h11 joins an obs-fold line into the field
  before it with a space: a folded ``Host`` fails here), too many header fields. A length
  with leading zeros is forwarded in its plain decimal spelling (``005`` -> ``5``); the
  framing fields are never dropped for being named in ``Connection``.
- trailers of a chunked request: :func:`trailer_fields` drops every field that may not be sent
  in a trailer section (RFC 9110 section 6.5.1: framing, routing, authentication, request
  modifiers, response controls, content format) and the hop-by-hop and ``X-Forwarded-*``
  fields; the rest is forwarded.

Response side (backend -> client): the same hop-by-hop fields are dropped, and
``Transfer-Encoding`` too: h11 re-frames the body for the client (chunked for HTTP/1.1 clients
when there is no ``Content-Length``). A ``Content-Length`` sent together with
``Transfer-Encoding`` is dropped (the chunked framing wins, RFC 9112 section 6.3); a
``Content-Length`` above 2^63-1 is a :class:`BackendProtocolError` (the client gets 502).
A ``101`` keeps ``Upgrade`` and ``Connection: upgrade``. Response trailers go through
:func:`trailer_fields` too (the proxy forwards them only when the client's response is chunked).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ._errors import BackendProtocolError
from ._paths import sanitize_path

Header = tuple[bytes, bytes]

_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"upgrade",
    }
)
_FORWARDED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-forwarded-port",
        b"x-forwarded-server",
        b"x-real-ip",
    }
)
_REQUEST_DROP = _HOP | _FORWARDED
_RESPONSE_DROP = _HOP | {b"transfer-encoding"}
_RESPONSE_LOOK = _RESPONSE_DROP | {b"content-length"}  # fields response_headers looks at
# Connection tokens that never remove a field: the framing fields stay whatever a peer names
# (dropping Content-Length would unframe a body the proxy has already started to read)
_CONNECTION_KEEP = frozenset(
    {b"close", b"keep-alive", b"upgrade", b"", b"content-length", b"transfer-encoding"}
)
# RFC 9110 section 7.2 / RFC 3986: the bytes a uri-host [ ":" port ] is made of (a character
# check, like Go's net/http: deleting them must leave nothing); empty is allowed (no authority)
_HOST_BYTES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~%!$&'()*+,;=:[]"
# RFC 9110 section 6.5.1: fields whose meaning is needed before the content, or that a backend
# merging trailers into the head would act on. Never forwarded in a trailer section.
_TRAILER_DROP = (
    _REQUEST_DROP
    | _RESPONSE_DROP
    | frozenset(
        {
            # framing
            b"content-length",
            b"transfer-encoding",
            # routing
            b"host",
            b"forwarded",
            b"max-forwards",
            # authentication and state
            b"authorization",
            b"www-authenticate",
            b"cookie",
            b"set-cookie",
            # request modifiers
            b"expect",
            b"range",
            b"if-match",
            b"if-none-match",
            b"if-modified-since",
            b"if-unmodified-since",
            b"if-range",
            b"cache-control",
            b"pragma",
            # response controls
            b"age",
            b"expires",
            b"date",
            b"location",
            b"retry-after",
            b"vary",
            b"warning",
            # content format
            b"content-type",
            b"content-encoding",
            b"content-range",
            b"content-language",
            b"content-location",
        }
    )
)
# the largest length a signed 64-bit parser holds; anything longer than 18 digits is checked
MAX_CONTENT_LENGTH = 2**63 - 1
_SAFE_LENGTH_DIGITS = 18


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request refused before routing: the status to answer with, and why."""

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A request ready to be routed and forwarded.

    ``headers`` lacks ``Host`` and the ``X-Forwarded-*`` fields; :func:`backend_headers` adds them
    once the route (and so ``pass_host_header``) is known.
    """

    host: bytes | None
    path: bytes
    headers: list[Header]
    websocket: bool
    upgrade: bytes | None
    forwarded: dict[bytes, bytes] | None = None  # the client's X-Forwarded-*, when trusted
    chunked: bool = False  # the body is chunked (its size is only known once it has arrived)


def _split_connection(values: list[bytes]) -> set[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            tokens.add(token.strip().lower())
    return tokens


def prepare_request(
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    max_header_count: int,
    max_header_bytes: int,
    trust_forwarded: bool = False,
    max_body_bytes: int | None = None,
) -> PreparedRequest | Rejection:
    """Check and strip a parsed request head (h11 lower-cases the field names).

    h11 bounds only a head that is still incomplete; a complete one that arrived in a single
    read is measured here (field names, values and their separators, plus the target).
    ``trust_forwarded`` keeps the client's ``X-Forwarded-*`` values (it is a trusted proxy).
    A ``Content-Length`` above ``max_body_bytes`` is refused with 413.
    """
    if len(headers) > max_header_count:
        return Rejection(431, f"more than {max_header_count} header fields")
    size = len(target)
    host: bytes | None = None
    connection: list[bytes] = []
    upgrade: bytes | None = None
    has_length = has_chunked = False
    out: list[Header] = []
    forwarded: dict[bytes, bytes] | None = None
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name in _REQUEST_DROP:
            if name == b"connection":
                connection.append(value)
            elif name == b"upgrade":
                upgrade = value
            elif trust_forwarded and name in _FORWARDED:
                if forwarded is None:
                    forwarded = {}
                seen = forwarded.get(name)
                forwarded[name] = value if seen is None else seen + b", " + value
            continue
        if name == b"host":
            if host is not None:
                return Rejection(400, "more than one Host header")
            host = value
            continue
        if name == b"content-length":
            has_length = True
            if len(value) > _SAFE_LENGTH_DIGITS or (value[0] == 48 and len(value) > 1):
                length = int(value)  # h11 checked: 1 to 20 ASCII digits
                if length > MAX_CONTENT_LENGTH:
                    return Rejection(400, "Content-Length above 2^63-1")
                value = b"%d" % length
            if max_body_bytes is not None and int(value) > max_body_bytes:
                return Rejection(413, f"request body larger than {max_body_bytes} bytes")
        elif name == b"transfer-encoding":
            has_chunked = True
        out.append((name, value))
    if size > max_header_bytes:
        return Rejection(431, f"request head larger than {max_header_bytes} bytes")
    if has_length and has_chunked:
        return Rejection(400, "both Content-Length and Transfer-Encoding")
    websocket = False
    if connection:
        tokens = _split_connection(connection)
        named = tokens - _CONNECTION_KEEP
        if named:
            out = [h for h in out if h[0] not in named]
        websocket = (
            upgrade is not None
            and b"upgrade" in tokens
            and b"websocket" in _split_connection([upgrade])
        )
    path = target
    if target[:1] != b"/":
        lowered = target[:8].lower()
        if lowered.startswith(b"http://") or lowered.startswith(b"https://"):
            rest = target.split(b"//", 1)[1]
            authority, slash, tail = rest.partition(b"/")
            if not authority:
                return Rejection(400, "absolute request-target without a host")
            host = authority
            path = slash + tail if slash else b"/"
        elif target != b"*":
            return Rejection(400, "request-target is not a path or an absolute URL")
    if host is not None and host.translate(None, _HOST_BYTES):
        return Rejection(400, "invalid Host")
    path = sanitize_path(path)  # traefik's sanitizePath: routed and forwarded cleaned
    return PreparedRequest(
        host, path, out, websocket, upgrade if websocket else None, forwarded, has_chunked
    )


def _port_of(host: bytes, default: bytes) -> bytes:
    if host.endswith(b"]"):
        return default
    _, colon, port = host.rpartition(b":")
    return port if colon and port.isdigit() else default


def backend_headers(
    prepared: PreparedRequest,
    *,
    backend_host: bytes | None,
    client_ip: bytes | None,
    proto: bytes,
) -> list[Header]:
    """The header list sent to the backend.

    ``backend_host`` replaces the client's ``Host`` (``pass_host_header = false``); ``None``
    keeps it. When the client is a trusted proxy (``prepared.forwarded`` is set), its
    ``X-Forwarded-*`` values are kept and ``client_ip`` is appended to ``X-Forwarded-For``.
    """
    host = prepared.host
    out: list[Header] = [(b"host", backend_host if backend_host is not None else host or b"")]
    out += prepared.headers
    if prepared.forwarded is not None:
        forwarded = dict(prepared.forwarded)  # a copy: this function changes nothing it is given
        chain = forwarded.pop(b"x-forwarded-for", None)
        if client_ip is not None:
            chain = client_ip if chain is None else chain + b", " + client_ip
        if chain is not None:
            out.append((b"x-forwarded-for", chain))
        if client_ip is not None and b"x-real-ip" not in forwarded:
            out.append((b"x-real-ip", client_ip))
        proto = forwarded.pop(b"x-forwarded-proto", proto)
        fwd_host = forwarded.pop(b"x-forwarded-host", host)
        port = forwarded.pop(b"x-forwarded-port", None)
        out += forwarded.items()  # X-Real-Ip, X-Forwarded-Server as the trusted proxy sent them
    else:
        if client_ip is not None:
            out.append((b"x-forwarded-for", client_ip))
            out.append((b"x-real-ip", client_ip))
        fwd_host = host
        port = None
    out.append((b"x-forwarded-proto", proto))
    if fwd_host:
        out.append((b"x-forwarded-host", fwd_host))
    if port is None:
        port = _port_of(host or b"", b"443" if proto == b"https" else b"80")
    out.append((b"x-forwarded-port", port))
    if prepared.upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", prepared.upgrade))
    return out


def response_headers(
    headers: Iterable[tuple[bytes, bytes]], *, switching: bool = False
) -> list[Header]:
    """The header list sent to the client for a backend's response (or its ``101``).

    Raises :class:`BackendProtocolError` for a ``Content-Length`` above 2^63-1.
    """
    out: list[Header] = []
    connection: list[bytes] = []
    upgrade: bytes | None = None
    chunked = has_length = False
    for name, value in headers:
        if name in _RESPONSE_LOOK:
            if name == b"content-length":
                has_length = True
                if len(value) > _SAFE_LENGTH_DIGITS or (value[0] == 48 and len(value) > 1):
                    length = int(value)  # h11 checked: 1 to 20 ASCII digits
                    if length > MAX_CONTENT_LENGTH:
                        raise BackendProtocolError("backend sent a Content-Length above 2^63-1")
                    value = b"%d" % length
                out.append((name, value))
            elif name == b"connection":
                connection.append(value)
            elif name == b"upgrade":
                upgrade = value
            elif name == b"transfer-encoding":
                chunked = True
            continue
        out.append((name, value))
    if chunked and has_length:
        out = [h for h in out if h[0] != b"content-length"]
    if connection:
        named = _split_connection(connection) - _CONNECTION_KEEP
        if named:
            out = [h for h in out if h[0] not in named]
    if switching and upgrade is not None:
        out.append((b"connection", b"upgrade"))
        out.append((b"upgrade", upgrade))
    return out


def trailer_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[Header]:
    """The trailer fields forwarded: those RFC 9110 allows in a trailer section.

    Dropped: framing (``Content-Length``, ``Transfer-Encoding``, ``Trailer``, hop-by-hop),
    routing (``Host``, ``Forwarded``, ``X-Forwarded-*``, ``X-Real-Ip``), authentication and
    cookies, request modifiers (``Expect``, ``Range``, conditionals, ``Cache-Control``),
    response controls and content format (``Content-Type``, ``Content-Encoding``, ...).
    """
    return [(name, value) for name, value in fields if name not in _TRAILER_DROP]
