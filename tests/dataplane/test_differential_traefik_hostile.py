"""Differential test: the hostile-input corpus against a real traefik 3.7.

Every row of ``support/hostile_cases.py`` is sent to traefik (file provider, one router
``PathPrefix(`/`)`` to a ``RawBackend``), exactly as ``test_proxy_hostile.py`` sends it to the
data plane. What traefik does is summarised in one line per case (the statuses, whether the
connection stayed open, what the backend received) and compared with the row: a case where
traefik differs must be listed in ``TRAEFIK_DIFFERS`` with what traefik measurably does, and
``docs/dataplane.md`` (hostile-input corpus: eventproxy and traefik) lists the same cases. A
case that stops differing, or starts to, fails the test, so the docs table stays true.

The run also prints every case's traefik summary (``pytest -s``) for updating the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from support import LOOPBACK, free_port
from support.backends import RawBackend
from support.hostile_cases import CASES, Case
from support.rawhttp import Exchange, Forwarded, exchange, frame_strict, framing_problems
from support.traefik import Traefik, require_traefik

pytestmark = [pytest.mark.services, pytest.mark.anyio]
LIMIT = 3.0  # seconds a case may take; traefik leaves some connections silent (HTTP/0.9)


# What traefik 3.7.15 does where it differs from the data plane's row (measured; see the docs).
# A case with several entries: traefik's answer depends on a race (client EOF vs backend).
def _refused(*statuses: int) -> tuple[str, ...]:
    """traefik answered one of ``statuses`` and closed; the backend got no complete request
    (traefik streams a body, so a backend may have seen the head before traefik gave up)."""
    return tuple(
        f"{status}; close; backend: nothing{extra}"
        for status in statuses
        for extra in ("", " + an incomplete request")
    )


_BODY_CUT = _refused(499, 500, 502)  # the client's EOF races traefik's backend request
TRAEFIK_DIFFERS: dict[str, tuple[str, ...]] = {
    # CL + TE: traefik frames by Transfer-Encoding, forwards as chunked and keeps the
    # connection open (RFC 9112 section 6.1 says close), so what follows the chunked body is
    # the next request: a front hop that prefers Content-Length is smuggled through
    "cl-te": ("200 200; keep-alive; backend: POST / b'', GGET /smuggled b''",),
    "te-cl": (
        "200; keep-alive; backend: POST / b'GET /smuggled HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n'",
    ),
    "cl-te-uppercase": ("200 200; keep-alive; backend: POST / b'', GET /smuggled b''",),
    "cl-zero-te": ("200; keep-alive; backend: POST / b'hello'",),
    "te-leading-space-value-with-cl": (
        "200 200; keep-alive; backend: POST / b'', GET /smuggled b''",
    ),
    # HTTP/1.0: traefik ignores Transfer-Encoding and frames by Content-Length (or no body)
    "cl-te-http10": ("200; close; backend: POST / b'5\\r\\nhe'",),
    "te-in-http10": ("200; close; backend: POST / b''",),
    # lengths: a list of equal values is refused; 21 digits with leading zeros are accepted
    "cl-list-same": ("400; close; backend: nothing",),
    "cl-21-digits": ("200; keep-alive; backend: POST / b'hello'",),
    "cl-longer-than-body": _BODY_CUT,
    # malformed chunked bodies: traefik has already started the backend request: 500
    "chunk-size-2-64-plus-5": _BODY_CUT,
    "chunk-size-ffffffffffffffff": _BODY_CUT,
    "chunk-size-21-digits": _refused(500),
    "chunk-size-negative": _refused(500),
    "chunk-size-0x": _refused(500),
    "chunk-size-not-hex": _refused(500),
    "chunk-extension-bare-lf": _refused(500),
    "chunk-extension-bare-cr": _refused(500),  # refused, where h11 drops the extension
    "chunk-data-too-long": _refused(500),
    "chunk-missing-crlf": _refused(500),
    "chunk-bare-lf": _BODY_CUT,
    "chunk-last-without-crlf": _BODY_CUT,
    # no limit on the number of fields (only on bytes: 1 MiB)
    "too-many-fields": ("200; keep-alive; backend: GET / b''",),
    # HTTP/0.9: no answer (until traefik's read timeout); the HTTP/2 preface: h2c is spoken
    "http09": (f"no HTTP/1.1 answer (silent for {LIMIT:g} s); close; backend: nothing",),
    "http2-preface": ("no HTTP/1.1 answer (an HTTP/2 SETTINGS frame); close; backend: nothing",),
    "connect-authority-form": ("501; close; backend: nothing",),
}


def summary(
    statuses: list[int] | tuple[int, ...],
    kept_open: bool,
    forwarded: list[Forwarded] | tuple[Forwarded, ...],
    *,
    partial: bool = False,
    ambiguous: bool = False,
    timed_out: bool = False,
    garbage: bytes = b"",
) -> str:
    """One comparable line: ``400; close; backend: nothing``."""
    status = " ".join(map(str, statuses)) or "no HTTP/1.1 answer"
    if garbage[3:4] == b"\x04" and garbage[:2] == b"\x00\x00":
        status += " (an HTTP/2 SETTINGS frame)"
    elif garbage:
        status += f" (+{len(garbage)} bytes that are no HTTP/1.1 response)"
    if timed_out:
        status += f" (silent for {LIMIT:g} s)"
    conn = "keep-alive" if kept_open else "close"
    if forwarded:
        got = ", ".join(f"{r.method.decode()} {r.target.decode()} {r.body!r}" for r in forwarded)
    else:
        got = "nothing"
    if partial:
        got += " + an incomplete request"
    if ambiguous:
        got += " (AMBIGUOUS framing)"
    return f"{status}; {conn}; backend: {got}"


def row_summary(case: Case) -> str:
    return summary(case.statuses, not case.closes, case.forwarded)


def observed_summary(case: Case, seen: Exchange, received: list[bytearray]) -> str:
    """``summary`` of what happened; an incomplete request on the backend is shown only when
    the row does not allow one."""
    forwarded: list[Forwarded] = []
    partial = ambiguous = False
    for data in received:
        requests, leftover = frame_strict(bytes(data))
        if requests and all(r.target == b"/__end" for r in requests):
            continue  # the sentinel's own connection
        forwarded += [r for r in requests if r.target != b"/__end"]
        partial |= leftover
        ambiguous |= bool(framing_problems(bytes(data)))
    return summary(
        seen.statuses,
        seen.kept_open,
        forwarded,
        partial=partial and not case.partial,
        ambiguous=ambiguous,
        timed_out=seen.timed_out,
        garbage=seen.garbage,
    )


@pytest.fixture(scope="module")
def traefik_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    require_traefik()
    backend_port = free_port()
    t = Traefik(Path(tmp_path_factory.mktemp("traefik-hostile")))
    try:
        t.apply(
            {
                "http": {
                    "routers": {"all": {"rule": "PathPrefix(`/`)", "service": "raw"}},
                    "services": {
                        "raw": {
                            "loadBalancer": {
                                "servers": [{"url": f"http://{LOOPBACK}:{backend_port}"}]
                            }
                        }
                    },
                }
            }
        )
        yield t.web_port, backend_port
    finally:
        t.stop()


OBSERVED: dict[str, str] = {}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_traefik_on_the_hostile_corpus(case: Case, traefik_port: tuple[int, int]) -> None:
    web_port, backend_port = traefik_port
    async with anyio.create_task_group() as tg:
        backend = RawBackend(port=backend_port)
        await tg.start(backend.serve)
        seen = await exchange(
            web_port,
            case.raw,
            responses=len(case.statuses),
            client_eof=case.client_eof,
            limit=LIMIT,
        )
        await backend.wait_closed(limit=10)
        tg.cancel_scope.cancel()
    theirs = observed_summary(case, seen, backend.received)
    OBSERVED[case.name] = theirs
    print(f"\n{case.name}: {theirs}")
    ours = row_summary(case)
    expected = TRAEFIK_DIFFERS.get(case.name, (ours,))
    assert theirs in expected, (
        f"{case.name}: traefik now does {theirs!r}; the table says {expected!r} "
        f"(eventproxy: {ours!r})"
    )
