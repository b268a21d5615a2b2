"""Hostile and malformed requests (the corpus in ``hostile_cases.py``): each is refused with the
right status and the connection closed, or reaches the backend as a normalised request whose
framing is unambiguous; plus the slow-client timeouts."""

from __future__ import annotations

import anyio
import pytest

from eventproxy_dataplane import ProxySettings
from support.backends import (
    HTTPBackend,
    RawBackend,
    make_table,
    raw_exchange,
    running_proxy,
    status_of,
)
from support.hostile_cases import CASES, CLOSE, Case
from support.rawhttp import TRAILER_FORBIDDEN, Exchange, exchange, frame_strict, framing_problems

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


def test_the_corpus_is_large_and_names_are_unique() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_corpus(case: Case) -> None:
    async with anyio.create_task_group() as tg:
        backend = RawBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table) as proxy:
            seen = await exchange(
                proxy.port,
                case.raw,
                responses=len(case.statuses),
                client_eof=case.client_eof,
            )
            await backend.wait_closed()
            # the proxy is still healthy
            ok = await exchange(proxy.port, b"GET /ok HTTP/1.1\r\nHost: x\r\n" + CLOSE + b"\r\n")
            assert ok.statuses == [200]
            await backend.wait_closed()
        tg.cancel_scope.cancel()
    check_outcome(case, seen, backend.received[:-1])


def check_outcome(case: Case, seen: Exchange, received: list[bytearray]) -> None:
    """What the client got and what the backend received, against the case's table row."""
    assert not seen.timed_out, (case.name, seen)
    assert seen.statuses == list(case.statuses), (case.name, seen)
    assert seen.kept_open is not case.closes, (case.name, seen)
    if case.closes:
        assert seen.responses[-1].header(b"connection") == b"close"
    assert seen.garbage == b"", seen.garbage[:200]
    forwarded = []
    for data in received:
        requests, leftover = frame_strict(bytes(data))
        if requests and all(r.target == b"/__end" for r in requests):
            continue  # the sentinel's own connection
        if not case.forwarded and not case.partial:
            assert bytes(data) == b"", (case.name, bytes(data))
        assert not leftover or case.partial, (case.name, bytes(data))
        forwarded += [r for r in requests if r.target != b"/__end"]
        assert framing_problems(bytes(data)) == [], (case.name, bytes(data))
        for request in requests:
            names = {k for k, _ in request.trailers}
            assert not names & TRAILER_FORBIDDEN, (case.name, request.trailers)
    assert forwarded == list(case.forwarded), (case.name, forwarded)


async def test_slowloris_is_cut_off_after_the_header_timeout() -> None:
    settings = ProxySettings(header_timeout=1.5)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100 + b"\r\n\r\n"
            received = bytearray()
            started = anyio.current_time()
            async with await anyio.connect_tcp("127.0.0.1", proxy.port) as s:

                async def trickle() -> None:
                    for byte in request:
                        try:
                            await s.send(bytes([byte]))
                        except (anyio.BrokenResourceError, OSError):
                            return
                        await anyio.sleep(1.0)

                async with anyio.create_task_group() as inner:
                    inner.start_soon(trickle)
                    with anyio.fail_after(10):
                        while True:
                            try:
                                received += await s.receive()
                            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                                break
                    inner.cancel_scope.cancel()
            elapsed = anyio.current_time() - started
            assert status_of(bytes(received)) == 408
            assert 1.0 < elapsed < 5.0
        assert backend.requests == []
        tg.cancel_scope.cancel()


async def test_idle_keep_alive_connection_is_closed_silently() -> None:
    settings = ProxySettings(idle_timeout=0.3)
    async with anyio.create_task_group() as tg:
        backend = HTTPBackend()
        await tg.start(backend.serve)
        table = make_table({"r": ("PathPrefix(`/`)", [backend.url])})
        async with running_proxy(table, settings) as proxy:
            out = await raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", limit=5)
            assert status_of(out) == 200
            assert out.count(b"HTTP/1.1") == 1  # no 408 for an idle connection
        tg.cancel_scope.cancel()
