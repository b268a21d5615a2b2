"""The sans-IO connection core, driven by the public mock edge: no sockets, no event loop.

Each test scripts the client's and the backend's bytes and checks what the core made of them
(the bytes each peer got, the actions, the counters), on both parsers.
"""

from __future__ import annotations

import subprocess
import sys

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventproxy_dataplane import BackendConnectError, BackendTimeoutError, ProxySettings
from eventproxy_dataplane._core import (
    AcquireBackend,
    ReleaseBackend,
    SendBackend,
    SendClient,
)
from eventproxy_dataplane.testing import MockEdge
from support.backends import PARSERS

ROUTES = {"/": "http://127.0.0.1:9000", "/user/a/": "http://127.0.0.1:9001"}
GET = b"GET /user/a/x HTTP/1.1\r\nHost: hub.example\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi"


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def edge_for(parser: str, **kwargs: object) -> MockEdge:
    return MockEdge(ROUTES, ProxySettings(parser=parser, **kwargs))  # type: ignore[arg-type]


def head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    return head, body


def test_get_is_forwarded_with_forwarded_headers_and_answered(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    assert edge.acquired == [("http://127.0.0.1:9001", False)]
    assert edge.backend is not None
    sent = bytes(edge.backend.received).lower()
    assert sent.startswith(b"get /user/a/x http/1.1\r\n")
    assert b"host: hub.example\r\n" in sent
    assert b"x-forwarded-for: 127.0.0.1\r\n" in sent
    assert b"x-forwarded-proto: http\r\n" in sent
    got = edge.reply(OK)
    head, body = head_and_body(got)
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"hi"
    assert edge.backends[0].released is True  # pooled
    assert not edge.client_closed
    assert edge.core.read_client and edge.core.deadline == 180.0  # idle timeout


def test_keep_alive_reuses_the_pooled_backend(parser: str) -> None:
    edge = edge_for(parser)
    for _ in range(3):
        edge.client(GET)
        assert edge.reply(OK).endswith(b"hi")
    assert (
        edge.acquired == [("http://127.0.0.1:9001", False)] + [("http://127.0.0.1:9001", True)] * 2
    )
    assert len(edge.backends) == 1
    assert edge.context.metrics.in_flight == 0


def test_one_write_per_direction_per_message(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    edge.reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    sends = [a for a in edge.actions if type(a) in (SendClient, SendBackend)]
    assert [type(a) for a in sends] == [SendBackend, SendClient]


def test_hop_by_hop_headers_are_stripped_both_ways(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(
        b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, x-secret\r\nx-secret: 1\r\n"
        b"keep-alive: timeout=5\r\nte: trailers\r\n\r\n"
    )
    assert edge.backend is not None
    sent = bytes(edge.backend.received).lower()
    assert b"x-secret" not in sent and b"keep-alive" not in sent
    got = edge.reply(
        b"HTTP/1.1 200 OK\r\nConnection: x-drop\r\nx-drop: 1\r\nkeep-alive: 5\r\n"
        b"content-length: 0\r\n\r\n"
    ).lower()
    assert b"x-drop" not in got and b"keep-alive" not in got


def test_head_request_gets_no_body(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(b"HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n")
    got = edge.reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
    assert got.endswith(b"\r\n\r\n") and b"content-length: 10" in got.lower()
    assert not edge.client_closed


def test_http10_client_gets_a_close_delimited_body(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(b"GET /x HTTP/1.0\r\n\r\n")
    assert edge.backend is not None
    assert b"host: 127.0.0.1:9000\r\n" in bytes(edge.backend.received).lower()
    got = edge.reply(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    head, body = head_and_body(got)
    assert body == b"hi"
    assert b"connection: close" in head.lower()
    assert edge.client_closed


def test_no_route_is_404_and_keeps_the_connection(parser: str) -> None:
    edge = MockEdge({"/user/a/": "http://127.0.0.1:9001"}, ProxySettings(parser=parser))
    got = edge.client(b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 404 ")
    assert got.endswith(b"404 page not found\n")
    assert not edge.client_closed and edge.acquired == []
    assert edge.context.metrics.requests[("", 4)] == 1


def test_pipelined_requests_are_answered_in_order(parser: str) -> None:
    edge = MockEdge({"/user/a/": "http://127.0.0.1:9001"}, ProxySettings(parser=parser))
    got = edge.client(
        b"GET /nope1 HTTP/1.1\r\nHost: h\r\n\r\n" * 300
        + GET
        + b"GET /nope2 HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert got.count(b"404 page not found") == 300
    assert edge.backend is not None  # the routed one waits for its backend
    got = edge.reply(OK)
    assert got.startswith(b"HTTP/1.1 200 OK") and got.count(b"HTTP/1.1 404") == 1


def test_streamed_request_body_with_back_pressure(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(b"POST /x HTTP/1.1\r\nHost: h\r\ncontent-length: 10\r\n\r\n12")
    assert edge.core.read_client and edge.core.read_backend
    assert edge.backend is not None
    backend = edge.backend
    assert bytes(backend.received).endswith(b"\r\n\r\n12")
    n = len(edge.actions)
    edge.client(b"345")
    assert [type(a) for a in edge.actions[n:]] == [SendBackend]
    edge.client(b"67890")
    assert bytes(backend.received).endswith(b"1234567890")
    assert not edge.core.read_client  # the body is whole: stop reading the client
    assert edge.reply(OK).endswith(b"hi")
    assert backend.released is True


def test_chunked_body_past_max_body_bytes_is_413(parser: str) -> None:
    edge = edge_for(parser, max_body_bytes=5)
    edge.client(b"POST /x HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert edge.backend is not None
    got = edge.client(b"3\r\ndef\r\n")
    assert got.startswith(b"HTTP/1.1 413 ")
    assert edge.client_closed and edge.backends[0].released is False


def test_content_length_above_max_body_bytes_is_413_before_any_backend(parser: str) -> None:
    edge = edge_for(parser, max_body_bytes=5)
    got = edge.client(b"POST /x HTTP/1.1\r\nHost: h\r\ncontent-length: 6\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 413 ") and edge.acquired == [] and edge.client_closed


def test_expect_100_continue_is_relayed(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(b"PUT /x HTTP/1.1\r\nHost: h\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
    assert edge.backend is not None
    assert b"expect: 100-continue" in bytes(edge.backend.received).lower()
    assert edge.reply(b"HTTP/1.1 100 Continue\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
    edge.client(b"ok")
    assert bytes(edge.backend.received).endswith(b"ok")
    assert edge.reply(OK).startswith(b"HTTP/1.1 200 OK")


def test_bad_request_is_400_and_closes(parser: str) -> None:
    edge = edge_for(parser)
    got = edge.client(
        b"GET /x HTTP/1.1\r\nHost: h\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n"
    )
    assert got.startswith(b"HTTP/1.1 400 ") and edge.client_closed


def test_oversize_head_is_431(parser: str) -> None:
    edge = edge_for(parser, max_header_bytes=1024)
    got = edge.client(b"GET /x HTTP/1.1\r\nHost: h\r\nx: " + b"a" * 2000 + b"\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 431 ") and edge.client_closed


def test_header_timeout_is_408_once_part_of_a_head_arrived(parser: str) -> None:
    edge = edge_for(parser, header_timeout=5.0)
    edge.client(b"GET /x HT")
    edge.advance(4.9)
    assert not edge.client_closed
    edge.advance(0.2)
    assert edge.client_received.startswith(b"HTTP/1.1 408 ") and edge.client_closed


def test_idle_timeout_closes_silently(parser: str) -> None:
    edge = edge_for(parser, idle_timeout=3.0)
    edge.client(GET)
    edge.reply(OK)
    n = len(edge.client_received)
    edge.advance(3.1)
    assert edge.client_closed and len(edge.client_received) == n


def test_backend_response_timeout_is_504(parser: str) -> None:
    edge = edge_for(parser, backend_response_timeout=2.0)
    edge.client(GET)
    edge.advance(2.5)
    assert edge.client_received.startswith(b"HTTP/1.1 504 ")
    assert edge.client_closed and edge.backends[0].released is False
    assert 'kind="timeout"' in edge.context.metrics.render()


def test_reused_connection_that_fails_is_retried_once(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    edge.reply(OK)
    edge.client(GET)
    assert edge.acquired[-1][1] is True
    edge.reply(b"")  # the pooled connection had been closed by the backend
    assert edge.acquired[-1] == ("http://127.0.0.1:9001", False)
    assert edge.reply(OK).endswith(b"hi")
    assert [b.released for b in edge.backends] == [False, True]


def test_post_on_a_reused_connection_is_not_retried(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    edge.reply(OK)
    edge.client(b"POST /x HTTP/1.1\r\nHost: h\r\ncontent-length: 0\r\n\r\n")
    edge.backend_reset()
    assert edge.client_received.endswith(b"502 Bad Gateway\n")
    assert len(edge.acquired) == 2


@pytest.mark.parametrize("down", [502, 503])
def test_refused_backend_is_backend_down_status(parser: str, down: int) -> None:
    edge = edge_for(parser, backend_down_status=down)
    edge.acquire_errors.append(BackendConnectError("refused (scripted)"))
    got = edge.client(GET)
    assert got.startswith(b"HTTP/1.1 %d " % down)
    assert not edge.client_closed  # the request was whole: keep-alive
    assert 'kind="connect"' in edge.context.metrics.render()


def test_connect_timeout_is_504(parser: str) -> None:
    edge = edge_for(parser)
    edge.acquire_errors.append(BackendTimeoutError("slow (scripted)"))
    assert edge.client(GET).startswith(b"HTTP/1.1 504 ")


def test_error_target_page_is_fetched(parser: str) -> None:
    edge = edge_for(parser, error_target="http://127.0.0.1:8081/hub/error")
    edge.error_pages["http://127.0.0.1:8081/hub/error/503"] = (b"<h1>down</h1>", b"text/html")
    edge.acquire_errors.append(BackendConnectError("refused"))
    edge2 = edge_for(
        parser, error_target="http://127.0.0.1:8081/hub/error", backend_down_status=503
    )
    edge2.error_pages.update(edge.error_pages)
    edge2.acquire_errors.append(BackendConnectError("refused"))
    got = edge2.client(GET)
    assert edge2.fetched == ["http://127.0.0.1:8081/hub/error/503?url=%2Fuser%2Fa%2Fx"]
    assert got.startswith(b"HTTP/1.1 503 ") and got.endswith(b"<h1>down</h1>")
    assert b"content-type: text/html" in got.lower()
    got = edge.client(GET)  # 502: no page scripted, the fetch fails: the default body
    assert got.endswith(b"502 Bad Gateway\n")


def test_backend_reset_after_the_head_closes_the_client(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    edge.reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345")
    edge.reply(b"")
    assert edge.client_closed and edge.client_received.endswith(b"12345")
    assert 'kind="reset"' in edge.context.metrics.render()


def test_websocket_upgrade_is_relayed_with_the_trailing_bytes(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nearly"
    )
    assert edge.backend is not None
    assert b"upgrade: websocket" in bytes(edge.backend.received).lower()
    got = edge.reply(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"\r\nfirst"
    )
    assert got.startswith(b"HTTP/1.1 101 ")
    assert edge.relay is not None
    assert edge.relay.client_pending == b"early" and edge.relay.backend_pending == b"first"
    assert edge.core.finished and edge.backends[0].relayed
    edge.close()
    assert edge.context.metrics.in_flight == 0 and edge.context.metrics.connections == 0


def test_websocket_upgrade_refused_closes_after_the_answer(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(
        b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    got = edge.reply(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 403 ") and b"connection: close" in got.lower()
    assert edge.client_closed


def test_activity_and_metrics_are_counted(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    assert edge.context.metrics.in_flight == 1
    edge.reply(OK)
    assert edge.context.metrics.in_flight == 0
    assert set(edge.context.activity.snapshot()) == {"r1"}
    assert 'router="r1"' in edge.context.metrics.render()
    edge.close()
    assert edge.context.metrics.connections == 0


def test_releases_are_balanced(parser: str) -> None:
    edge = edge_for(parser)
    edge.client(GET)
    edge.reply(OK)
    edge.client(GET)
    edge.client_reset()
    acquires = sum(type(a) is AcquireBackend for a in edge.actions)
    releases = sum(type(a) is ReleaseBackend for a in edge.actions)
    assert acquires == releases == 2


def _run_split(parser: str, request: bytes, response: bytes, cut_req: int, cut_resp: int) -> bytes:
    edge = edge_for(parser)
    for piece in (request[:cut_req], request[cut_req:]):
        if piece:  # b"" would be EOF
            edge.client(piece)
    for piece in (response[:cut_resp], response[cut_resp:]):
        if piece:
            edge.reply(piece)
    assert edge.backend is None or edge.backend.released is not None
    return _decoded(bytes(edge.client_received), b"GET")


def _decoded(data: bytes, method: bytes) -> bytes:
    """A response as h11 reads it (the proxy re-chunks a chunked body per read)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "h")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    head, body, end = b"", bytearray(), b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            break
        if type(event) is h11.Response:
            head = b"%d %r" % (event.status_code, sorted(event.headers))
        elif type(event) is h11.Data:
            body += event.data
        elif type(event) is h11.EndOfMessage:
            end = b"END"
            break
    return b"|".join([head, bytes(body), end])


EXCHANGES = [
    (GET, OK),
    (
        b"POST /x HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwxyz\r\n0\r\n\r\n",
    ),
    (
        b"PUT /x HTTP/1.1\r\nHost: h\r\ncontent-length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nxyz",
    ),
]


@pytest.mark.parametrize("exchange", range(len(EXCHANGES)))
def test_split_at_every_offset_gives_the_same_answer(parser: str, exchange: int) -> None:
    request, response = EXCHANGES[exchange]
    whole = _run_split(parser, request, response, len(request), len(response))
    assert whole.startswith(b"20") and whole.endswith(b"END")
    for cut in range(len(request) + 1):
        assert _run_split(parser, request, response, cut, len(response)) == whole, cut
    for cut in range(len(response) + 1):
        assert _run_split(parser, request, response, len(request), cut) == whole, cut


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_chunking_gives_the_same_bytes_to_both_peers(parser: str, data: st.DataObject) -> None:
    request, response = EXCHANGES[data.draw(st.integers(0, len(EXCHANGES) - 1))]
    reference = edge_for(parser)
    reference.client(request)
    reference.reply(response)
    edge = edge_for(parser)
    for piece in _pieces(data, request):
        edge.client(piece)
    for piece in _pieces(data, response):
        edge.reply(piece)
    assert _decoded(bytes(edge.client_received), b"GET") == _decoded(
        bytes(reference.client_received), b"GET"
    )
    sent = bytes(edge.backends[0].received)
    if b"chunked" not in request:  # a chunked body is re-chunked per read
        assert sent == bytes(reference.backends[0].received)
    assert sent.startswith(bytes(reference.backends[0].received).split(b"\r\n\r\n")[0])


def _pieces(data: st.DataObject, blob: bytes) -> list[bytes]:
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(blob) - 1)), max_size=6)))
    out, last = [], 0
    for cut in cuts:
        out.append(blob[last:cut])
        last = cut
    out.append(blob[last:])
    return [p for p in out if p]


def test_the_core_imports_no_io_library() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _NO_IO_CHECK], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


_NO_IO_CHECK = """
import importlib.util, pathlib, sys, types
spec = importlib.util.find_spec("eventproxy_dataplane")
pkg = types.ModuleType("eventproxy_dataplane")
pkg.__path__ = list(spec.submodule_search_locations)
sys.modules["eventproxy_dataplane"] = pkg  # skip __init__ (it imports the anyio edge)
import eventproxy_dataplane._core
bad = [m for m in ("anyio", "asyncio", "trio", "socket", "sniffio") if m in sys.modules]
print(bad)
sys.exit(1 if bad else 0)
"""
