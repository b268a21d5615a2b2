"""The pure header rules of the proxy (no sockets): request checks and rewriting."""

from __future__ import annotations

import pytest

from eventproxy_dataplane import BackendProtocolError, ProxySettings, SettingsError
from eventproxy_dataplane._proxy_headers import (
    MAX_CONTENT_LENGTH,
    PreparedRequest,
    Rejection,
    backend_headers,
    prepare_request,
    response_headers,
    trailer_fields,
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


@pytest.mark.parametrize("length", [MAX_CONTENT_LENGTH + 1, 2**64, 2**64 + 5, 10**20 - 1])
def test_content_length_above_int64_is_refused(length: int) -> None:
    out = prepare_request(b"/", [(b"host", b"h"), (b"content-length", b"%d" % length)], **LIMITS)
    assert out == Rejection(400, "Content-Length above 2^63-1")


@pytest.mark.parametrize(
    ("spelling", "plain"),
    [(b"0", b"0"), (b"7", b"7"), (b"007", b"7"), (b"%d" % MAX_CONTENT_LENGTH, None)],
)
def test_content_length_is_plain_decimal(spelling: bytes, plain: bytes | None) -> None:
    p = _prepare(b"/", [(b"host", b"h"), (b"content-length", spelling)])
    assert p.headers == [(b"content-length", plain or spelling)]
    assert response_headers([(b"content-length", spelling)]) == [
        (b"content-length", plain or spelling)
    ]


def test_response_content_length_above_int64_is_a_protocol_error() -> None:
    with pytest.raises(BackendProtocolError, match="2\\^63-1"):
        response_headers([(b"content-length", b"%d" % 2**64)])


def test_response_content_length_with_chunked_is_dropped() -> None:
    out = response_headers(
        [(b"content-length", b"3"), (b"transfer-encoding", b"chunked"), (b"x-a", b"1")]
    )
    assert out == [(b"x-a", b"1")]


@pytest.mark.parametrize(
    "name",
    [
        b"content-length",
        b"transfer-encoding",
        b"host",
        b"trailer",
        b"te",
        b"connection",
        b"keep-alive",
        b"upgrade",
        b"authorization",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"www-authenticate",
        b"cookie",
        b"set-cookie",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
        b"max-forwards",
        b"expect",
        b"range",
        b"if-match",
        b"cache-control",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"location",
        b"vary",
    ],
)
def test_trailer_fields_drop_what_rfc_9110_forbids_there(name: bytes) -> None:
    assert trailer_fields([(b"x-sum", b"1"), (name, b"v"), (b"server-timing", b"a")]) == [
        (b"x-sum", b"1"),
        (b"server-timing", b"a"),
    ]


@pytest.mark.parametrize(
    "host",
    [
        b"a b",
        b"x Transfer-Encoding: chunked",
        b"a/b",
        b"user@a",
        b"a?b",
        b"a#b",
        b"caf\xc3\xa9",
        b"a\tb",
        b'a"b',
        b"a\\b",
    ],
)
def test_invalid_host_is_refused(host: bytes) -> None:
    assert prepare_request(b"/", [(b"host", host)], **LIMITS) == Rejection(400, "invalid Host")
    if b"/" not in host:  # (a slash would end the authority of an absolute URL)
        # the authority of an absolute-form target is checked the same way
        out = prepare_request(b"http://" + host + b"/p", [(b"host", b"ok")], **LIMITS)
        assert out == Rejection(400, "invalid Host")


@pytest.mark.parametrize(
    "host", [b"", b"a.test", b"A.TEST.:80", b"127.0.0.1:8000", b"[::1]:8000", b"xn--caf-dma.test"]
)
def test_valid_host_is_kept(host: bytes) -> None:
    assert _prepare(b"/", [(b"host", host)]).host == host


def test_framing_fields_named_in_connection_are_kept() -> None:
    p = _prepare(
        b"/",
        [(b"host", b"h"), (b"connection", b"close, Content-Length"), (b"content-length", b"5")],
    )
    assert p.headers == [(b"content-length", b"5")]


def test_max_body_bytes_is_validated() -> None:
    for bad in (0, -1, 1.5, True, "10"):
        with pytest.raises(SettingsError, match="max_body_bytes"):
            ProxySettings(max_body_bytes=bad)  # type: ignore[arg-type]
    assert ProxySettings(max_body_bytes=None).max_body_bytes is None


def test_content_length_above_max_body_bytes_is_413() -> None:
    headers = [(b"host", b"h"), (b"content-length", b"11")]
    assert prepare_request(b"/", headers, **LIMITS, max_body_bytes=10) == Rejection(
        413, "request body larger than 10 bytes"
    )
    assert isinstance(prepare_request(b"/", headers, **LIMITS, max_body_bytes=11), PreparedRequest)
