"""Parse cost per message: the h11 parser and the httptools (llhttp) parser, same bytes.

Pure CPU, no sockets: each round feeds a complete message to a fresh parser (what the proxy
does per connection, keeping the parser for kept-alive requests costs less) and takes events
until the message ends. Shapes: the benchmark's request (``wrk``'s GET with five fields), a
browser-like GET with cookies (twelve fields), a chunked POST, and the backend's answer (nginx's
100-byte response with ``Content-Length``, and a chunked one). Also measured: a kept-alive
connection of 100 requests on one parser (``start_next_cycle`` between them), and the cost of
a head that takes the reference path (obs-fold: h11 decides for the fast parser). Bounded:
a fixed number of messages per shape. Numbers are microseconds per message, the best of 15
rounds, the two parsers alternating round by round; the load average is recorded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from eventproxy_dataplane._http import NEED_DATA, PAUSED, EndOfMessage
from eventproxy_dataplane._parse_h11 import H11RequestParser, H11ResponseParser

MAX_HEAD = 64 * 1024

WRK_GET = (
    b"GET /user/user00042/api/status HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n"
    b"User-Agent: wrk\r\nAccept: */*\r\nConnection: keep-alive\r\nX-Bench: 1\r\n\r\n"
)
BROWSER_GET = (
    b"GET /user/alice/lab/tree/notebooks/analysis.ipynb?reset HTTP/1.1\r\n"
    b"Host: hub.example.org\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
    b"Referer: https://hub.example.org/hub/home\r\nConnection: keep-alive\r\n"
    b"Cookie: jupyterhub-session-id=0123456789abcdef; _xsrf=2|deadbeef|cafebabe|1700000000\r\n"
    b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n"
    b"Priority: u=0, i\r\n\r\n"
)
CHUNKED_POST = (
    b"POST /user/alice/api/contents/x HTTP/1.1\r\nHost: hub.example.org\r\n"
    b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"40\r\n" + b"x" * 64 + b"\r\n" for _ in range(4))
    + b"0\r\n\r\n"
)
NGINX_200 = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.26.3\r\nDate: Wed, 02 Dec 2026 20:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    + b"x"
    * 100
)
CHUNKED_200 = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"100\r\n" + b"y" * 256 + b"\r\n" for _ in range(4))
    + b"0\r\n\r\n"
)
OBS_FOLD_GET = b"GET / HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n"


def _one(factory: Callable[..., Any], raw: bytes, method: bytes | None) -> None:
    parser = factory(max_head_bytes=MAX_HEAD)
    if method is not None:
        parser.expect(method)
    parser.feed(raw)
    while True:
        event = parser.next_event()
        if type(event) is EndOfMessage:
            return
        if event is NEED_DATA or event is PAUSED:
            raise AssertionError("message incomplete")


def _keep_alive(factory: Callable[..., Any], raw: bytes, count: int) -> None:
    parser = factory(max_head_bytes=MAX_HEAD)
    for _ in range(count):
        parser.feed(raw)
        while type(parser.next_event()) is not EndOfMessage:
            pass
        assert parser.next_event() is PAUSED
        parser.start_next_cycle()


def _alternating(
    loops: dict[str, Callable[[], None]], messages: int, rounds: int
) -> dict[str, float]:
    """Best microseconds per message of each loop, the loops alternating round by round (a
    busy machine then disturbs both alike)."""
    best = dict.fromkeys(loops, float("inf"))
    for _ in range(rounds):
        for name, loop in loops.items():
            start = time.perf_counter()
            loop()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(t / messages * 1e6, 3) for name, t in best.items()}


def run(ctx: Any) -> dict[str, Any]:
    from eventproxy_dataplane._parse_httptools import (
        HttptoolsRequestParser,
        HttptoolsResponseParser,
    )

    quick = getattr(ctx, "quick", False)
    n = 500 if quick else 2_000
    rounds = 5 if quick else 15
    shapes: list[tuple[str, bytes, bytes | None]] = [
        ("wrk_get", WRK_GET, None),
        ("browser_get", BROWSER_GET, None),
        ("chunked_post", CHUNKED_POST, None),
        ("obs_fold_get_reference_path", OBS_FOLD_GET, None),
        ("nginx_200_response", NGINX_200, b"GET"),
        ("chunked_200_response", CHUNKED_200, b"GET"),
    ]
    parsers = {
        "h11": (H11RequestParser, H11ResponseParser),
        "httptools": (HttptoolsRequestParser, HttptoolsResponseParser),
    }
    out: dict[str, Any] = {
        "us_per_message": {},
        "speedup": {},
        "messages_per_round": n,
        "rounds": rounds,
        "load_average_1min_before": round(os.getloadavg()[0], 2),
    }
    for shape, raw, method in shapes:
        loops = {}
        for name, (request, response) in parsers.items():
            factory = request if method is None else response

            def loop(
                factory: Callable[..., Any] = factory,
                raw: bytes = raw,
                method: bytes | None = method,
            ) -> None:
                for _ in range(n):
                    _one(factory, raw, method)

            loops[name] = loop
        row = _alternating(loops, n, rounds)
        out["us_per_message"][shape] = row
        out["speedup"][shape] = round(row["h11"] / row["httptools"], 2)
    count = 100
    kept_loops = {}
    for name, (request, _response) in parsers.items():

        def kept(request: Callable[..., Any] = request) -> None:
            for _ in range(max(1, n // count)):
                _keep_alive(request, WRK_GET, count)

        kept_loops[name] = kept
    row = _alternating(kept_loops, max(1, n // count) * count, rounds)
    out["us_per_message"]["wrk_get_kept_alive_x100"] = row
    out["speedup"]["wrk_get_kept_alive_x100"] = round(row["h11"] / row["httptools"], 2)
    out["load_average_1min_after"] = round(os.getloadavg()[0], 2)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(None), indent=2))
