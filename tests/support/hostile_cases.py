"""The hostile-input corpus: raw HTTP/1.1 requests, and what a backend may receive for each.

A table, not code: every parser (h11 today; httptools later) and every proxy (traefik in the
differential tier) runs the same cases. Each case gives the bytes a client sends and what the
data plane must do: the statuses the client gets, whether the connection is closed afterwards,
and the complete requests (method, target, body) the backend may receive -- none for a refused
request. Whatever reaches a backend must also be unambiguous: exactly one framing field, a
plain decimal length, only ``chunked``, no obs-fold / bare CR / bare LF / NUL, no forbidden
trailer fields (``support.rawhttp.framing_problems`` checks that on the backend's bytes).

Every request routes (the table has ``PathPrefix(`/`)``) and uses ``Host: x`` unless the case is
about the host; ``/smuggled`` in a body marks a request that must never reach a backend as a
request of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from support.rawhttp import Forwarded

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@dataclass(frozen=True)
class Case:
    name: str
    group: str
    raw: bytes
    statuses: tuple[int, ...]  # what the client gets, in order
    forwarded: tuple[Forwarded, ...] = ()  # the complete requests the backend may receive
    closes: bool = True  # the proxy closes the connection after its answer(s)
    client_eof: bool = False  # the client half-closes after sending (a body cut short)
    partial: bool = False  # the backend may see an incomplete request (head forwarded first)
    why: str = ""


def _post(headers: bytes, body: bytes, target: bytes = b"/") -> bytes:
    return b"POST " + target + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body


def _get(headers: bytes = b"", line: bytes = b"GET / HTTP/1.1") -> bytes:
    return line + b"\r\n" + headers + b"\r\n"


CLOSE = b"Connection: close\r\n"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
HELLO = (Forwarded(b"POST", b"/", b"hello"),)
GET_ROOT = (Forwarded(b"GET", b"/", b""),)

CASES: list[Case] = [
    # -- CL.TE and TE.CL: both framing fields (RFC 9112 section 6.1: refuse, or re-frame + close)
    Case(
        "cl-te",
        "CL.TE",
        _post(b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\nG" + SMUGGLED),
        (400,),
    ),
    Case(
        "te-cl",
        "TE.CL",
        _post(
            b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
            b"%x\r\n" % (len(SMUGGLED)) + SMUGGLED + b"\r\n0\r\n\r\n",
        ),
        (400,),
    ),
    Case(
        "cl-te-uppercase",
        "CL.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: CHUNKED\r\n", b"0\r\n\r\n" + SMUGGLED),
        (400,),
    ),
    Case(
        "cl-zero-te",
        "CL.TE",
        _post(b"Content-Length: 0\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
        (400,),
    ),
    Case(
        "cl-te-http10",
        "CL.TE",
        b"POST / HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_HELLO,
        (400,),
    ),
    # -- TE.TE: obfuscated Transfer-Encoding, each with a Content-Length a front end may prefer
    Case(
        "te-xchunked",
        "TE.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding: xchunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        (501,),
        why="an unknown coding is 501 (RFC 9112 section 6.1)",
    ),
    Case(
        "te-chunked-identity",
        "TE.TE",
        _post(b"Transfer-Encoding: chunked, identity\r\n", CHUNKED_HELLO),
        (501,),
        why="chunked must be the last coding; identity is not a coding",
    ),
    Case(
        "te-identity-chunked",
        "TE.TE",
        _post(b"Transfer-Encoding: identity, chunked\r\n", CHUNKED_HELLO),
        (501,),
    ),
    Case(
        "te-gzip-chunked",
        "TE.TE",
        _post(b"Transfer-Encoding: gzip, chunked\r\n", CHUNKED_HELLO),
        (501,),
    ),
    Case(
        "te-duplicate",
        "TE.TE",
        _post(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", CHUNKED_HELLO),
        (501,),
        why="h11 refuses a repeated Transfer-Encoding field",
    ),
    Case(
        "te-chunked-then-x",
        "TE.TE",
        _post(
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
            b"0\r\n\r\n" + SMUGGLED,
        ),
        (501,),
    ),
    Case(
        "te-quoted",
        "TE.TE",
        _post(b'Transfer-Encoding: "chunked"\r\n', CHUNKED_HELLO),
        (501,),
    ),
    Case(
        "te-with-parameter",
        "TE.TE",
        _post(b"Transfer-Encoding: chunked;q=1\r\n", CHUNKED_HELLO),
        (501,),
    ),
    Case(
        "te-space-before-colon",
        "TE.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding : chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        (400,),
    ),
    Case(
        "te-tab-before-colon",
        "TE.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding\t: chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        (400,),
    ),
    Case(
        "te-leading-space-value-with-cl",
        "TE.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding:  chunked\r\n", b"0\r\n\r\n" + SMUGGLED),
        (400,),
        why="optional whitespace around the value is no obfuscation: still CL + TE",
    ),
    Case(
        "te-tab-value",
        "TE.TE",
        _post(b"Connection: close\r\nTransfer-Encoding:\tchunked\t\r\n", CHUNKED_HELLO),
        (200,),
        HELLO,
        why="tab is optional whitespace: a plain chunked request, re-framed",
    ),
    Case(
        "te-mixed-case-alone",
        "TE.TE",
        _post(b"Connection: close\r\ntRaNsFeR-eNcOdInG: ChUnKeD\r\n", CHUNKED_HELLO),
        (200,),
        HELLO,
        why="names and codings are case-insensitive: forwarded as plain chunked",
    ),
    Case(
        "te-obs-fold",
        "TE.TE",
        _post(CLOSE + b"Content-Length: 5\r\nX-A: a\r\n Transfer-Encoding: chunked\r\n", b"hello"),
        (200,),
        HELLO,
        why="obs-fold is replaced by a space (RFC 9112 section 5.2): one field X-A, framed by CL",
    ),
    Case(
        "te-leading-space-line",
        "TE.TE",
        b"POST / HTTP/1.1\r\n Transfer-Encoding: chunked\r\nHost: x\r\nContent-Length: 5\r\n\r\n"
        b"0\r\n\r\n",
        (400,),
        why="whitespace between the start line and the first field (RFC 9112 section 2.2)",
    ),
    Case(
        "te-underscore",
        "TE.TE",
        _post(
            b"Connection: close\r\nContent-Length: 5\r\nTransfer_Encoding: chunked\r\n", b"hello"
        ),
        (200,),
        HELLO,
        why="Transfer_Encoding is another field; the body is framed by Content-Length alone",
    ),
    Case(
        "te-vertical-tab",
        "TE.TE",
        _post(b"Content-Length: 5\r\nTransfer-Encoding:\x0bchunked\r\n", b"0\r\n\r\n"),
        (400,),
    ),
    Case(
        "te-in-http10",
        "TE.TE",
        b"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO,
        (200,),
        HELLO,
        why="accepted and re-framed for the backend (RFC 9112 section 6.1: then close)",
    ),
    # -- lengths
    Case("cl-plus", "length", _post(b"Content-Length: +5\r\n", b"hello"), (400,)),
    Case("cl-minus", "length", _post(b"Content-Length: -5\r\n", b"hello"), (400,)),
    Case("cl-hex", "length", _post(b"Content-Length: 0x5\r\n", b"hello"), (400,)),
    Case("cl-decimal-point", "length", _post(b"Content-Length: 5.0\r\n", b"hello"), (400,)),
    Case("cl-exponent", "length", _post(b"Content-Length: 5e0\r\n", b"hello"), (400,)),
    Case("cl-empty", "length", _post(b"Content-Length: \r\n", b"hello"), (400,)),
    Case("cl-list-different", "length", _post(b"Content-Length: 5, 6\r\n", b"hello!"), (400,)),
    Case(
        "cl-two-different",
        "length",
        _post(b"Content-Length: 5\r\nContent-Length: 6\r\n", b"hello!"),
        (400,),
    ),
    Case(
        "cl-list-same",
        "length",
        _post(CLOSE + b"Content-Length: 5,5\r\n", b"hello"),
        (200,),
        HELLO,
        why="a list of one value (RFC 9110 section 8.6): forwarded as 5",
    ),
    Case(
        "cl-two-same",
        "length",
        _post(CLOSE + b"Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
        (200,),
        HELLO,
        why="forwarded with one Content-Length",
    ),
    Case(
        "cl-leading-zeros",
        "length",
        _post(CLOSE + b"Content-Length: 0005\r\n", b"hello"),
        (200,),
        HELLO,
        why="forwarded as 5 (no parser can read it as octal)",
    ),
    Case(
        "cl-2-64",
        "length",
        _post(b"Content-Length: 18446744073709551616\r\n", SMUGGLED),
        (400,),
        why="issue 12: a parser wrapping at 64 bits reads 0 and the body as a request",
    ),
    Case(
        "cl-2-64-plus-body",
        "length",
        _post(b"Content-Length: 18446744073709551621\r\n", b"hello" + SMUGGLED),
        (400,),
    ),
    Case("cl-2-63", "length", _post(b"Content-Length: 9223372036854775808\r\n", b""), (400,)),
    Case(
        "cl-21-digits",
        "length",
        _post(b"Content-Length: 000000000000000000005\r\n", b"hello"),
        (400,),
    ),
    Case(
        "cl-shorter-than-body",
        "length",
        _post(b"Content-Length: 3\r\n", b"hel" + SMUGGLED.replace(b"GET", b"G\x01T")),
        (200, 400),
        (Forwarded(b"POST", b"/", b"hel"),),
        why="the rest is the next request on the connection, and it is malformed",
    ),
    Case(
        "cl-longer-than-body",
        "length",
        _post(b"Content-Length: 10\r\n", b"hello"),
        (400,),
        client_eof=True,
        partial=True,
        why="the head and body so far are forwarded; the cut is a 400 and the backend is closed",
    ),
    Case(
        "cl-zero-then-pipelined",
        "length",
        _post(b"Content-Length: 0\r\n", b"") + _get(CLOSE + b"Host: x\r\n", b"GET /next HTTP/1.1"),
        (200, 200),
        (Forwarded(b"POST", b"/", b""), Forwarded(b"GET", b"/next", b"")),
        why="two requests, each framed on its own",
    ),
    # -- chunked bodies
    Case(
        "chunk-size-2-64-plus-5",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"10000000000000005\r\nhello"),
        (400,),
        client_eof=True,
        partial=True,
        why="a size no 64-bit parser holds; what reaches a backend is re-chunked by size",
    ),
    Case(
        "chunk-size-ffffffffffffffff",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"ffffffffffffffff\r\nhello"),
        (400,),
        client_eof=True,
        partial=True,
    ),
    Case(
        "chunk-size-21-digits",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"000000000000000000005\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    Case(
        "chunk-size-leading-zeros",
        "chunked",
        _post(CLOSE + b"Transfer-Encoding: chunked\r\n", b"0005\r\nhello\r\n0\r\n\r\n"),
        (200,),
        HELLO,
        why="re-chunked as 5",
    ),
    Case(
        "chunk-size-negative",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"-5\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    Case(
        "chunk-size-0x",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"0x5\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    Case(
        "chunk-size-not-hex",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"zz\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    Case(
        "chunk-extension",
        "chunked",
        _post(CLOSE + b"Transfer-Encoding: chunked\r\n", b"5;name=value\r\nhello\r\n0\r\n\r\n"),
        (200,),
        HELLO,
        why="extensions are dropped when re-chunking",
    ),
    Case(
        "chunk-extension-bare-lf",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"5;a\nb\r\nhello\r\n0\r\n\r\n"),
        (400,),
    ),
    Case(
        "chunk-extension-bare-cr",
        "chunked",
        _post(CLOSE + b"Transfer-Encoding: chunked\r\n", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
        (200,),
        HELLO,
        why="h11 takes an extension to the CRLF; it is dropped, so no backend sees the CR",
    ),
    Case(
        "chunk-data-too-long",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"),
        (400,),
        partial=True,
    ),
    Case(
        "chunk-missing-crlf",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello0\r\n\r\n"),
        (400,),
        partial=True,
    ),
    Case(
        "chunk-bare-lf",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"),
        (400,),
        client_eof=True,
        partial=True,
        why="a chunk-size line must end in CRLF",
    ),
    Case(
        "chunk-trailers-forbidden",
        "chunked",
        _post(
            CLOSE + b"Transfer-Encoding: chunked\r\n",
            b"5\r\nhello\r\n0\r\nContent-Length: 50\r\nHost: evil\r\nX-Sum: 1\r\n\r\n",
        ),
        (200,),
        HELLO,
        why="issue 12: forbidden trailer fields are dropped, X-Sum is kept",
    ),
    Case(
        "chunk-last-without-crlf",
        "chunked",
        _post(b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n"),
        (400,),
        client_eof=True,
        partial=True,
    ),
    # -- the head: line endings, obs-fold, NUL, sizes
    Case(
        "obs-fold",
        "head",
        _get(CLOSE + b"Host: x\r\nX-A: a\r\n b\r\n"),
        (200,),
        GET_ROOT,
        why="replaced by a space: the backend gets one line 'x-a: a b'",
    ),
    Case(
        "host-obs-fold",
        "head",
        _post(b"X-A: a\r\n", b"", target=b"/").replace(
            b"Host: x\r\n", b"Host: x\r\n Transfer-Encoding: chunked\r\n"
        ),
        (400,),
        why="the folded Host 'x Transfer-Encoding: chunked' is not host[:port]",
    ),
    Case("host-with-space", "head", _get(b"Host: a b\r\n"), (400,)),
    Case("host-with-slash", "head", _get(b"Host: a/b\r\n"), (400,)),
    Case("host-with-at", "head", _get(b"Host: user@a\r\n"), (400,)),
    Case("bare-cr-in-value", "head", _get(b"Host: x\r\nX-A: a\rb\r\n"), (400,)),
    Case("bare-lf-in-value", "head", _get(b"Host: x\r\nX-A: a\nb\r\n"), (400,)),
    Case(
        "bare-lf-line-endings",
        "head",
        b"GET / HTTP/1.1\nHost: x\nConnection: close\n\n",
        (200,),
        GET_ROOT,
        why="RFC 9112 section 2.2 lets a recipient accept LF; forwarded with CRLF",
    ),
    Case("nul-in-value", "head", _get(b"Host: x\r\nX-A: a\x00b\r\n"), (400,)),
    Case("nul-in-name", "head", _get(b"Host: x\r\nX-\x00A: a\r\n"), (400,)),
    Case("nul-in-target", "head", _get(b"Host: x\r\n", b"GET /a\x00b HTTP/1.1"), (400,)),
    Case("no-colon", "head", _get(b"Host: x\r\nX-Broken\r\n"), (400,)),
    Case("empty-name", "head", _get(b"Host: x\r\n: value\r\n"), (400,)),
    Case("space-before-colon", "head", _get(b"Host: x\r\nX-A : a\r\n"), (400,)),
    Case("non-ascii-name", "head", _get(b"Host: x\r\nX-\xc3\xa4: a\r\n"), (400,)),
    Case(
        "obs-text-value",
        "head",
        _get(CLOSE + b"Host: x\r\nX-A: caf\xc3\xa9\r\n"),
        (200,),
        GET_ROOT,
        why="obs-text is allowed in a value and forwarded as is",
    ),
    Case(
        "oversize-head",
        "head",
        _get(b"Host: x\r\nX-Big: " + b"a" * (2 * 1024 * 1024) + b"\r\n"),
        (431,),
        why="above max_header_bytes (64 KiB) and above traefik's 1 MiB",
    ),
    Case(
        "too-many-fields",
        "head",
        _get(b"Host: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(250))),
        (431,),
        why="above max_header_count (200)",
    ),
    Case("two-hosts", "head", _get(b"Host: x\r\nHost: y\r\n"), (400,)),
    Case("no-host", "head", _get(b"X-A: a\r\n"), (400,)),
    Case(
        "connection-names-content-length",
        "head",
        _post(b"Connection: close, Content-Length\r\nContent-Length: 5\r\n", b"hello"),
        (200,),
        HELLO,
        why="a framing field named in Connection is kept (dropping it would unframe the body)",
    ),
    Case(
        "h2c-upgrade",
        "head",
        _get(
            CLOSE + b"Host: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        ),
        (200,),
        GET_ROOT,
        why="h2c is not spoken: Upgrade and HTTP2-Settings are dropped, plain HTTP/1.1 follows",
    ),
    # -- the request line
    Case("http09", "request-line", b"GET /\r\n\r\n", (400,)),
    Case(
        "http2-preface",
        "request-line",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00",
        (505,),
        why="prior-knowledge HTTP/2 is not spoken",
    ),
    Case("http2-version", "request-line", _get(b"Host: x\r\n", b"GET / HTTP/2.0"), (505,)),
    Case("http09-version", "request-line", _get(b"Host: x\r\n", b"GET / HTTP/0.9"), (505,)),
    Case(
        "http12-version",
        "request-line",
        _get(CLOSE + b"Host: x\r\n", b"GET / HTTP/1.2"),
        (200,),
        GET_ROOT,
        why="a higher minor version is read as 1.1 (RFC 9110 section 2.5)",
    ),
    Case("lowercase-version", "request-line", _get(b"Host: x\r\n", b"GET / http/1.1"), (400,)),
    Case("extra-token", "request-line", _get(b"Host: x\r\n", b"GET / HTTP/1.1 x"), (400,)),
    Case("double-space", "request-line", _get(b"Host: x\r\n", b"GET  / HTTP/1.1"), (400,)),
    Case("space-in-target", "request-line", _get(b"Host: x\r\n", b"GET /a b HTTP/1.1"), (400,)),
    Case("invalid-method", "request-line", _get(b"Host: x\r\n", b"G@T / HTTP/1.1"), (400,)),
    Case("empty-method", "request-line", _get(b"Host: x\r\n", b" / HTTP/1.1"), (400,)),
    Case("target-not-a-path", "request-line", _get(b"Host: x\r\n", b"GET x HTTP/1.1"), (400,)),
    Case(
        "connect-authority-form",
        "request-line",
        _get(b"Host: x\r\n", b"CONNECT x:443 HTTP/1.1"),
        (400,),
        why="no tunnels",
    ),
    Case(
        "absolute-form",
        "request-line",
        _get(CLOSE + b"Host: x\r\n", b"GET http://x/abs HTTP/1.1"),
        (200,),
        (Forwarded(b"GET", b"/abs", b""),),
        why="origin-form on the backend; the authority is the host",
    ),
    Case(
        "leading-empty-line",
        "request-line",
        b"\r\n" + _get(CLOSE + b"Host: x\r\n"),
        (400,),
        why="RFC 9112 section 2.2 says SHOULD ignore; h11 refuses, which is safe",
    ),
]
