"""The pure header rules of the proxy (no sockets): request checks and rewriting."""

from __future__ import annotations

from eventproxy_dataplane._proxy_headers import (
    PreparedRequest,
    Rejection,
    backend_headers,
    prepare_request,
    response_headers,
)

LIMITS = {"max_header_count": 100, "max_header_bytes": 65536}


def _prepare(target: bytes, headers: list[tuple[bytes, bytes]], **kw: bool) -> PreparedRequest:
    out = prepare_request(target, headers, **LIMITS, **kw)
    assert isinstance(out, PreparedRequest), out
    return out


def test_websocket_upgrade_is_kept_other_upgrades_dropped() -> None:
    ws = _prepare(
        b"/ws",
        [(b"host", b"h"), (b"connection", b"keep-alive, Upgrade"), (b"upgrade", b"websocket")],
    )
    assert ws.websocket and ws.upgrade == b"websocket"
    out = backend_headers(ws, backend_host=None, client_ip=b"1.2.3.4", proto=b"http")
    assert (b"connection", b"upgrade") in out and (b"upgrade", b"websocket") in out
    h2c = _prepare(b"/", [(b"host", b"h"), (b"connection", b"upgrade"), (b"upgrade", b"h2c")])
    assert not h2c.websocket
    out = backend_headers(h2c, backend_host=None, client_ip=None, proto=b"http")
    assert all(name not in (b"upgrade", b"connection") for name, _ in out)


def test_fields_named_in_connection_are_dropped() -> None:
    p = _prepare(
        b"/", [(b"host", b"h"), (b"connection", b"x-a, close"), (b"x-a", b"1"), (b"x-b", b"2")]
    )
    assert p.headers == [(b"x-b", b"2")]


def test_absolute_form_target_gives_host_and_path() -> None:
    p = _prepare(b"http://Hub.Example:8000/user/a?x=1", [(b"host", b"other")])
    assert p.host == b"Hub.Example:8000" and p.path == b"/user/a?x=1"
    assert _prepare(b"https://h", [(b"host", b"h")]).path == b"/"
    refused = prepare_request(b"h:443", [(b"host", b"h")], **LIMITS)
    assert isinstance(refused, Rejection) and refused.status == 400


def test_limits() -> None:
    many = [(b"host", b"h")] + [(b"x-%d" % i, b"v") for i in range(100)]
    assert prepare_request(b"/", many, **LIMITS) == Rejection(431, "more than 100 header fields")
    big = [(b"host", b"h"), (b"x", b"v" * 70000)]
    refused = prepare_request(b"/", big, **LIMITS)
    assert isinstance(refused, Rejection) and refused.status == 431


def test_forwarded_port_from_host_or_scheme() -> None:
    def port(host: bytes, proto: bytes) -> bytes:
        out = backend_headers(
            _prepare(b"/", [(b"host", host)]), backend_host=None, client_ip=None, proto=proto
        )
        return dict(out)[b"x-forwarded-port"]

    assert port(b"h:8443", b"http") == b"8443"
    assert port(b"h", b"https") == b"443"
    assert port(b"[::1]", b"http") == b"80"
    assert port(b"[::1]:81", b"http") == b"81"


def test_response_headers_drop_hop_by_hop_and_framing() -> None:
    out = response_headers(
        [
            (b"content-type", b"text/plain"),
            (b"transfer-encoding", b"chunked"),
            (b"connection", b"keep-alive, x-hop"),
            (b"keep-alive", b"timeout=5"),
            (b"x-hop", b"1"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
        ]
    )
    assert out == [
        (b"content-type", b"text/plain"),
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
    ]
    switching = response_headers(
        [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"), (b"sec-websocket-accept", b"x")],
        switching=True,
    )
    assert switching == [
        (b"sec-websocket-accept", b"x"),
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
    ]
