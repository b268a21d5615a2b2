"""Raw HTTP/1.1 on both sides of a proxy under test: a client that sends arbitrary bytes and
reads back every response, and two independent readings of what a backend received.

``exchange`` sends bytes on a new connection and reads responses until the proxy closes the
connection. When the proxy keeps it open after the responses a case expects, a sentinel
request (``GET /__end``, ``Connection: close``) is sent: its answer proves the connection was
still usable (``kept_open``) and any response before it that the case did not expect shows
up (a smuggled request answered). Reading never waits on a timer except the overall limit.

On the backend side, :func:`frame_strict` frames the bytes one connection delivered with h11
(strict), and :func:`framing_problems` reads them the way a naive, lenient server might and
lists everything a second parser could frame differently: more than one framing field, a
length that is not plain decimal or does not fit 63 bits, a transfer coding other than
``chunked``, obs-fold, bare CR/LF or NUL in a head, chunk extensions, trailer fields that are
forbidden in trailers. A forwarded request is unambiguous when that list is empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import anyio
import h11

LOOPBACK = "127.0.0.1"
SENTINEL = b"GET /__end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
_CHUNK = 65536
MAX_LENGTH = 2**63 - 1


# -- the client side ---------------------------------------------------------------------------


@dataclass
class Response:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


@dataclass
class Exchange:
    """What the client saw: responses (the sentinel's excluded), and how the connection ended."""

    responses: list[Response]
    kept_open: bool  # the proxy answered the sentinel after the expected responses
    timed_out: bool = False  # neither closed nor answered within the limit
    garbage: bytes = b""  # bytes after the last response that are not a response

    @property
    def statuses(self) -> list[int]:
        return [r.status for r in self.responses]


def parse_responses(data: bytes, *, eof: bool) -> tuple[list[Response], bytes]:
    """Complete responses at the start of ``data`` and the bytes left over.

    Framing: no body for 1xx/204/304, ``Transfer-Encoding: chunked``, ``Content-Length``, else
    the body runs to the end of the stream (complete only once ``eof``). Responses to ``HEAD``
    are not supported (the corpus sends none).
    """
    out: list[Response] = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out, data
        lines = data[:end].split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return out, data
        status = int(parts[1])
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.append((name.strip().lower(), value.strip()))
        rest = data[end + 4 :]
        fields = dict(headers)
        if 100 <= status < 200 or status in (204, 304):
            body = b""
        elif fields.get(b"transfer-encoding", b"").lower() == b"chunked":
            decoded = _dechunk(rest)
            if decoded is None:
                return out, data
            body, rest = decoded
        elif b"content-length" in fields:
            n = int(fields[b"content-length"])
            if len(rest) < n:
                return out, data
            body, rest = rest[:n], rest[n:]
        else:
            if not eof:
                return out, data
            body, rest = rest, b""
        if not 100 <= status < 200:
            out.append(Response(status, headers, body))
        data = rest


def _dechunk(data: bytes) -> tuple[bytes, bytes] | None:
    body = bytearray()
    pos = 0
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(data[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return None
            return bytes(body), data[end + 4 :]
        if len(data) < pos + size + 2:
            return None
        body += data[pos : pos + size]
        pos += size + 2


async def exchange(
    port: int,
    raw: bytes,
    *,
    responses: int = 1,
    client_eof: bool = False,
    limit: float = 10.0,
) -> Exchange:
    """Send ``raw`` on a new connection (then EOF when ``client_eof``) and read it all back."""
    buf = bytearray()
    got: list[Response] = []
    sentinel_sent = False
    before_sentinel = 0  # responses complete when the sentinel was sent
    async with await anyio.connect_tcp(LOOPBACK, port) as stream:
        await stream.send(raw)
        if client_eof:
            await stream.send_eof()
        with anyio.move_on_after(limit) as scope:
            while True:
                try:
                    chunk = await stream.receive(_CHUNK)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    break
                buf += chunk
                got, rest = parse_responses(bytes(buf), eof=False)
                wanted = responses + (1 if sentinel_sent else 0)
                if len(got) >= wanted and not rest and not sentinel_sent and not client_eof:
                    if any(r.header(b"connection") == b"close" for r in got):
                        continue  # the proxy announced the close: wait for it
                    sentinel_sent = True
                    before_sentinel = len(got)
                    try:
                        await stream.send(SENTINEL)
                    except (anyio.BrokenResourceError, OSError):
                        break
    got, rest = parse_responses(bytes(buf), eof=True)
    kept_open = sentinel_sent and len(got) > before_sentinel
    if kept_open:
        got = got[:-1]  # the sentinel's answer: the connection was still usable
    return Exchange(got, kept_open, timed_out=scope.cancelled_caught, garbage=rest)


# -- the backend side --------------------------------------------------------------------------


@dataclass(frozen=True)
class Forwarded:
    """One request as a strict parser frames it on the backend."""

    method: bytes
    target: bytes
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = field(default=(), compare=False)
    trailers: tuple[tuple[bytes, bytes], ...] = field(default=(), compare=False)


def frame_strict(data: bytes) -> tuple[list[Forwarded], bool]:
    """The complete requests h11 frames from one connection's bytes, and whether bytes are left
    over that do not make a complete request (a truncated or unparseable rest)."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    conn.receive_data(b"")
    out: list[Forwarded] = []
    request: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            return out, True
        if type(event) is h11.Request:
            request = event
            body = bytearray()
        elif type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage and request is not None:
            out.append(
                Forwarded(
                    request.method,
                    request.target,
                    bytes(body),
                    tuple(request.headers),
                    tuple(event.headers),
                )
            )
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return out, False
            conn.start_next_cycle()
            request = None
        elif type(event) is h11.ConnectionClosed:
            return out, False
        else:  # NEED_DATA after EOF: a truncated request
            return out, request is not None or bool(conn.trailing_data[0])


_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_PLAIN_LENGTH = re.compile(rb"0|[1-9][0-9]{0,18}")
_REQUEST_LINE = re.compile(rb"[A-Z]+ [^\x00-\x20\x7f]+ HTTP/1\.1")
TRAILER_FORBIDDEN = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"host",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"set-cookie",
        b"connection",
        b"te",
        b"upgrade",
        b"x-forwarded-for",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
    }
)


def framing_problems(data: bytes) -> list[str]:
    """Everything in one connection's bytes that another parser could frame differently.

    Reads line by line, as a lenient server might; stops at the first request it cannot frame
    (that is then the problem). Empty: every request in ``data`` has exactly one reading.
    """
    problems: list[str] = []
    pos = 0
    n = 0
    while pos < len(data):
        n += 1
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            problems.append(f"request {n}: head not terminated by CRLF CRLF")
            return problems
        head = data[pos:end]
        pos = end + 4
        for bad, what in ((b"\x00", "NUL"), (b"\n", "bare LF"), (b"\r", "bare CR")):
            if bad in head.replace(b"\r\n", b""):
                problems.append(f"request {n}: {what} in the head")
        lines = head.split(b"\r\n")
        if not _REQUEST_LINE.fullmatch(lines[0]):
            problems.append(f"request {n}: request line {lines[0][:80]!r}")
        lengths: list[bytes] = []
        codings: list[bytes] = []
        for line in lines[1:]:
            if line[:1] in (b" ", b"\t"):
                problems.append(f"request {n}: obs-fold")
                continue
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                problems.append(f"request {n}: field line {line[:80]!r}")
                continue
            lname = name.lower()
            if lname == b"content-length":
                lengths.append(value.strip(b" \t"))
            elif lname == b"transfer-encoding":
                codings.append(value.strip(b" \t"))
        if len(lengths) + len(codings) > 1:
            problems.append(f"request {n}: {len(lengths) + len(codings)} framing fields")
            return problems
        if codings:
            if codings[0] != b"chunked":
                problems.append(f"request {n}: Transfer-Encoding {codings[0]!r}")
                return problems
            pos = _chunked_problems(data, pos, n, problems)
            if pos < 0:
                return problems
        elif lengths:
            value = lengths[0]
            if not _PLAIN_LENGTH.fullmatch(value) or int(value) > MAX_LENGTH:
                problems.append(f"request {n}: Content-Length {value[:40]!r}")
                return problems
            pos += int(value)
    return problems


def _chunked_problems(data: bytes, pos: int, n: int, problems: list[str]) -> int:
    while True:
        eol = data.find(b"\r\n", pos)
        if eol < 0:
            return len(data)  # truncated: the proxy stopped mid-body
        line = data[pos:eol]
        if not re.fullmatch(rb"[0-9a-f]{1,15}", line):
            problems.append(f"request {n}: chunk-size line {line[:40]!r}")
            return -1
        size = int(line, 16)
        pos = eol + 2
        if size == 0:
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return len(data)
            for trailer in data[pos : end + 2].split(b"\r\n"):
                if not trailer:
                    continue
                name = trailer.partition(b":")[0].strip().lower()
                if name in TRAILER_FORBIDDEN:
                    problems.append(f"request {n}: trailer field {name!r}")
            return end + 4
        if len(data) < pos + size + 2:
            return len(data)
        if data[pos + size : pos + size + 2] != b"\r\n":
            problems.append(f"request {n}: chunk data not followed by CRLF")
            return -1
        pos += size + 2
