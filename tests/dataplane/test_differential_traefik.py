"""Differential test: the routing table picks the same backend as the real traefik.

One traefik (``.venv/bin/traefik``, file provider) runs for the whole module, with one
loopback HTTP backend per router that answers with its own id. Hypothesis generates router sets
(hosts incl. a wildcard, Path/PathPrefix with escaped and unicode characters, priorities,
``!``/``&&``/``||`` nesting) and batches of requests (prefix hits, near misses, other
spellings: percent-encoded unreserved and non-ASCII characters, encoded slashes, host case,
ports, trailing dots, queries). Each config is written for traefik -- we wait until its API
shows the new generation -- and loaded into ``RoutingTable``; every request goes to traefik
over a real socket and must land on the backend ``lookup`` picks, or both must be 404.

Dot and empty segments (``/a/../b``, ``/a/%2e%2e/b``, ``/a//b``) are generated: both resolve
them before routing (traefik's default ``sanitizePath``); ``test_forwarded_path_agrees`` checks
that the backend then gets the same path from both.

Input classes where the data plane deliberately differs from traefik are not generated here;
``docs/dataplane-rules.md`` says why, and ``test_documented_differences`` pins each of them:

* reserved characters written percent-encoded in the request (``%24`` for ``$``, ``%23%3F``):
  traefik keeps them encoded when routing, the data plane decodes them (JupyterHub's escaped
  routespecs must route), so rules never contain ``%`` and requests spell reserved characters
  raw;
* ties between routers of equal priority: traefik's order is undefined (unstable sort over a Go
  map), ours is by name, so generated routers have distinct priorities.
"""

from __future__ import annotations

import http.client
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from eventproxy_dataplane import RouterSpec, RoutingTable, parse_dynamic_config
from eventproxy_dataplane._rules import parse_rule
from support import LOOPBACK
from support.traefik import Traefik, require_traefik

pytestmark = pytest.mark.services

MAX_ROUTERS = 12
# configs per run (each with 40-70 requests); raise it for a longer soak run
EXAMPLES = int(os.environ.get("EVENTPROXY_DIFFERENTIAL_EXAMPLES", "25"))
ALLOW_ENCODED = [
    f"--entrypoints.web.http.encodedcharacters.{opt}=true"
    for opt in (
        "allowencodedslash",
        "allowencodedbackslash",
        "allowencodednullcharacter",
        "allowencodedsemicolon",
        "allowencodedpercent",
        "allowencodedquestionmark",
        "allowencodedhash",
    )
]


# -- backends that answer with their id ------------------------------------------------------
class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.ident.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, int]]:
    servers = []
    ports: dict[str, int] = {}
    for i in range(MAX_ROUTERS + 2):
        server = ThreadingHTTPServer((LOOPBACK, 0), _Echo)
        server.ident = f"r{i}"  # type: ignore[attr-defined]
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        ports[f"r{i}"] = int(server.server_address[1])
    yield ports
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def traefik(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traefik]:
    require_traefik()
    t = Traefik(tmp_path_factory.mktemp("traefik"), extra_args=ALLOW_ENCODED)
    try:
        yield t
    finally:
        t.stop()


# -- generation -------------------------------------------------------------------------------
UNRESERVED = "abcdefghijklmnopqrstuvwxyz0123456789-._~"
SUB_DELIMS = "!$&'()*+,;=:@"  # reserved: always written raw in requests (see module docstring)
OTHER = ' "|<>^`{}\\é☃ü'  # neither: always percent-encoded in requests
SEG_ALPHABET = "abcxyz019-._~" + SUB_DELIMS + OTHER
HOSTS = ["a.test", "b.test", "x.w.test", "*.w.test", "hub.test"]

# inserted before a "/" of a request path: "." becomes "%2E"/"%2e" half of the time (_spell)
DOTTY = ["/", "/.", "/..", "/x/..", "/x/y/../..", "/./.", "/../..", "/./x/.."]
segment = st.text(SEG_ALPHABET, min_size=1, max_size=5).filter(lambda s: s not in (".", ".."))
common_segment = st.sampled_from(["user", "alice", "al", "bob", "$p~c|a! ch@rs", "é", "hub"])
any_segment = st.one_of(common_segment, segment)
rule_path = st.builds(
    lambda segs, slash: "/" + "/".join(segs) + ("/" if slash else ""),
    st.lists(any_segment, min_size=0, max_size=3),
    st.booleans(),
).filter(lambda p: "//" not in p and "{{" not in p)  # traefik's file provider: a template

leaf = st.one_of(
    st.sampled_from(HOSTS).map(lambda h: f"Host(`{h}`)"),
    rule_path.map(lambda p: f"PathPrefix({_lit(p)})"),
    rule_path.map(lambda p: f"Path({_lit(p)})"),
)


def _go_escape(text: str) -> str:
    return "".join(
        f"\\x{b:02x}" if chr(b) in '"\\`' else chr(b) if b < 0x80 else f"\\x{b:02x}"
        for b in text.encode()
    )


def _combine(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        inner.map(
            lambda r: f"!{r}" if r.endswith(")") and "&&" not in r and "||" not in r else f"!({r})"
        ),
        st.tuples(inner, inner).map(lambda t: f"({t[0]}) && ({t[1]})"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} || {t[1]}"),
    )


rule_text = st.one_of(
    leaf,
    st.tuples(st.sampled_from(HOSTS), rule_path).map(
        lambda t: f"Host(`{t[0]}`) && PathPrefix({_lit(t[1])})"
    ),
    st.recursive(leaf, _combine, max_leaves=4),
)


def _lit(path: str) -> str:
    return f"`{path}`" if "`" not in path else f'"{_go_escape(path)}"'


@st.composite
def router_sets(draw: st.DrawFn) -> dict[str, tuple[str, int | None]]:
    n = draw(st.integers(1, MAX_ROUTERS))
    routers: dict[str, tuple[str, int | None]] = {}
    used: set[int] = set()
    for i in range(n):
        rule = draw(rule_text)
        prio: int | None = draw(st.one_of(st.none(), st.integers(1, 300)))
        effective = prio if prio else len(rule.encode())
        if effective in used:  # no ties: traefik's order among equal priorities is undefined
            prio = effective = 1000 + i
        used.add(effective)
        routers[f"r{i}"] = (rule, prio)
    if draw(st.booleans()):  # at a priority no other router has (a tie is undefined in traefik)
        routers[CATCH_ALL] = ("PathPrefix(`/`)", min(set(range(1, len(used) + 2)) - used))
    return routers


def _spell(path: str, draw: st.DrawFn) -> str:
    out = []
    for ch in path:
        if ch == "/":
            out.append("/")
        elif ch in UNRESERVED:
            out.append(ch if draw(st.booleans()) else _pct(ch, draw))
        elif ch in SUB_DELIMS:
            out.append(ch)
        else:
            out.append(_pct(ch, draw))
    return "".join(out)


def _pct(ch: str, draw: st.DrawFn) -> str:
    text = "".join(f"%{b:02X}" for b in ch.encode())
    return text.lower() if draw(st.booleans()) else text


@st.composite
def requests_for(
    draw: st.DrawFn, routers: dict[str, tuple[str, int | None]]
) -> list[tuple[str, str]]:
    paths = []
    for rule, _ in routers.values():
        for token in rule.split("Path")[1:]:
            try:
                tree = parse_rule("Path" + token[: token.index(")") + 1])
            except Exception:  # a fragment that is not one whole matcher: skip it
                continue
            paths.append(getattr(tree, "value", "/"))
    out = []
    for _ in range(draw(st.integers(40, 70))):
        base = (
            draw(st.sampled_from(paths)) if paths and draw(st.integers(0, 4)) else draw(rule_path)
        )
        how = draw(st.integers(0, 6))
        if how == 1:
            base = base.rstrip("/") + "/" + draw(any_segment)
        elif how == 2 and len(base) > 1:
            base = base[:-1]  # near miss
        elif how == 3:
            base = base + draw(any_segment)
        elif how == 4:
            base = base.rstrip("/") + "/" + draw(any_segment) + "/" + draw(any_segment)
        if draw(st.integers(0, 3)) == 0:  # dot and empty segments, resolved by both
            at = draw(st.sampled_from([i for i, c in enumerate(base) if c == "/"]))
            junk = draw(st.sampled_from(DOTTY))
            base = base[:at] + junk + base[at:]
        target = _spell(base, draw)
        if how == 5 and "/" in target[1:]:  # an encoded slash in place of a separator
            i = target.rindex("/")
            target = target[:i] + draw(st.sampled_from(["%2F", "%2f"])) + target[i + 1 :]
        if draw(st.integers(0, 5)) == 0:
            target += "?next=/user/alice/&x=%2F"
        host = draw(
            st.sampled_from(
                [
                    "a.test",
                    "A.TEST",
                    "a.test:8080",
                    "a.test.",
                    "b.test",
                    "x.w.test",
                    "Y.w.test:1",
                    "deep.x.w.test",
                    "w.test",
                    "hub.test",
                    "other.test",
                    "x.w.test.",
                    "HUB.test.:80",
                ]
            )
        )
        if draw(st.integers(0, 9)) == 0:  # absolute-form: its authority wins over Host
            target = f"http://{draw(st.sampled_from(['a.test', 'X.w.test:80']))}{target}"
        out.append((host, target))
    return out


# -- running one example ---------------------------------------------------------------------
def _config_doc(
    routers: dict[str, tuple[str, int | None]], ports: dict[str, int]
) -> dict[str, Any]:
    doc_routers: dict[str, Any] = {}
    services: dict[str, Any] = {}
    for name, (rule, prio) in routers.items():
        r: dict[str, Any] = {"rule": rule, "service": name, "entryPoints": ["web"]}
        if prio is not None:
            r["priority"] = prio
        doc_routers[name] = r
        services[name] = {
            "loadBalancer": {"servers": [{"url": f"http://{LOOPBACK}:{ports[name]}"}]}
        }
    return {"http": {"routers": doc_routers, "services": services}}


def _ask_traefik(port: int, requests: list[tuple[str, str]]) -> list[str]:
    answers = []
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    try:
        for host, target in requests:
            conn.putrequest("GET", target, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            answers.append(body if resp.status == 200 else str(resp.status))
            if resp.will_close:
                conn.close()
                conn = http.client.HTTPConnection(LOOPBACK, port, timeout=10)
    finally:
        conn.close()
    return answers


SENT = {"requests": 0, "configs": 0, "hits": 0}
CATCH_ALL = f"r{MAX_ROUTERS + 1}"


def check(
    traefik: Traefik,
    ports: dict[str, int],
    routers: dict[str, tuple[str, int | None]],
    requests: list[tuple[str, str]],
) -> None:
    doc = _config_doc(routers, ports)
    seen = traefik.apply(doc)
    config, problems = parse_dynamic_config(doc)
    table, table_problems = RoutingTable.build(config)
    assert problems == []
    ours_disabled = {p.where.split(".")[2] for p in table_problems}
    theirs_disabled = {n for n, r in seen.items() if r.get("status") != "enabled"}
    assert ours_disabled == theirs_disabled, (table_problems, seen)
    answers = _ask_traefik(traefik.web_port, requests)
    mismatches = []
    for (host, target), theirs in zip(requests, answers, strict=True):
        route = table.lookup(host, target.encode())
        ours = route.router if route is not None else "404"
        if ours != theirs:
            mismatches.append((host, target, f"ours={ours}", f"traefik={theirs}"))
        SENT["hits"] += ours not in ("404", CATCH_ALL)
    SENT["requests"] += len(requests)
    SENT["configs"] += 1
    assert not mismatches, (
        "routing differs from traefik:\n"
        + "\n".join(f"  {RouterSpec(n, r, n, p)}" for n, (r, p) in routers.items())
        + "\n"
        + "\n".join(map(str, mismatches))
    )


@st.composite
def examples(draw: st.DrawFn) -> tuple[dict[str, tuple[str, int | None]], list[tuple[str, str]]]:
    routers = draw(router_sets())
    return routers, draw(requests_for(routers))


@pytest.mark.timeout(max(120, EXAMPLES * 6))
def test_routing_table_agrees_with_traefik(traefik: Traefik, backends: dict[str, int]) -> None:
    SENT.update(requests=0, configs=0, hits=0)

    @given(examples())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        # shrinking re-runs traefik reloads for minutes; the failure message already lists
        # the whole router set and every mismatching request
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def run(example: tuple[dict[str, tuple[str, int | None]], list[tuple[str, str]]]) -> None:
        check(traefik, backends, *example)

    run()
    print(f"differential: {SENT}")
    assert SENT["requests"] >= min(1000, EXAMPLES * 40), SENT
    # the generator does reach the generated routers, not only the catch-all
    assert SENT["hits"] >= SENT["requests"] // 5, SENT


# -- the documented differences, pinned ------------------------------------------------------
WALNUT = "PathPrefix(`/user/walnut/$p~c|a! ch@rs/`)"


@pytest.mark.parametrize(
    ("rule", "host", "target", "ours", "theirs"),
    [
        # JupyterHub's escaped spelling of a decoded rule: we route it, traefik does not
        (WALNUT, "h", "/user/walnut/%24p~c%7Ca%21%20ch@rs/lab", "r0", "r1"),
        (WALNUT, "h", "/user/walnut/$p~c%7Ca!%20ch@rs/lab", "r0", "r0"),
        ("PathPrefix(`/user/h/#?/`)", "h", "/user/h/%23%3F/x", "r0", "r1"),
        # the same for both: dot and empty segments are resolved first (sanitizePath)
        ("PathPrefix(`/user/bob/`)", "h", "/user/alice/../bob/x", "r0", "r0"),
        ("PathPrefix(`/user/bob/`)", "h", "/user/alice/%2e%2e/bob/x", "r0", "r0"),
        ("PathPrefix(`/user/bob/`)", "h", "/user//bob/x", "r0", "r0"),
        ("PathPrefix(`/user/bob/`)", "h", "/user/bob/x/../..", "r1", "r1"),
        # JupyterHub's extra route with an empty segment: neither routes it (merged first)
        ("PathPrefix(`//has space/foo/`)", "h", "//has%20space/foo/x", "r1", "r1"),
        # the same for both: an encoded slash never crosses into another prefix
        ("PathPrefix(`/user/alice/`)", "h", "/user/alice%2Fx", "r1", "r1"),
        ("PathPrefix(`/user/alice/`)", "h", "/user/bob%2F..%2F..%2Fuser/alice/x", "r1", "r1"),
    ],
)
def test_documented_differences(
    traefik: Traefik,
    backends: dict[str, int],
    rule: str,
    host: str,
    target: str,
    ours: str,
    theirs: str,
) -> None:
    routers: dict[str, tuple[str, int | None]] = {"r0": (rule, None), "r1": ("PathPrefix(`/`)", 1)}
    doc = _config_doc(routers, backends)
    traefik.apply(doc)
    table, _ = RoutingTable.build(parse_dynamic_config(doc)[0])
    route = table.lookup(host, target.encode())
    assert (route.router if route else "404") == ours
    assert _ask_traefik(traefik.web_port, [(host, target)]) == [theirs]


# -- what the backend is sent: the same path from both ---------------------------------------
class _EchoPath(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


FORWARD_TARGETS = [
    "/user/bob/x",
    "/user//bob/x",
    "//user/bob/x",
    "/user/alice/../bob/x",
    "/user/alice/%2e%2e/bob/x",
    "/user/alice/%2E%2E/bob/x",
    "/user/./bob/x",
    "/user/%2e/bob/x",
    "/user/bob/./x/../y",
    "/user/bob/x/..",
    "/user/bob/x/.",
    "/user/bob/x/%2e",
    "/user/bob/..",
    "/user/bob//",
    "/user/bob/x//",
    "/../user/bob/x",
    "/user/bob/x?a=//b/../c",
    "/user/bob/a%2Fb/../c",
    "/user/bob/a%2F..%2Fb",
    "/user/bob/..%2f",
    "/user/bob/.%2e/bob/",
    "/user/bob/.x/..y/...",
    "/user/bob/x/../../../../y",
    "/.",
    "/..",
    "http://h/user/../user/bob/x",
]


def _unreserved_decoded(path: str) -> str:
    """traefik (Go) forwards percent-escapes of unreserved characters decoded and other escapes
    upper-cased; the data plane forwards the spelling it got (docs/dataplane-rules.md)."""
    import re

    def one(m: re.Match[str]) -> str:
        ch = chr(int(m.group(1), 16))
        return ch if ch in UNRESERVED or (ch.isalpha() and ch.isascii()) else m.group(0).upper()

    return re.sub(r"%([0-9A-Fa-f]{2})", one, path)


@pytest.mark.anyio
async def test_forwarded_path_agrees_with_traefik(traefik: Traefik) -> None:
    import anyio.to_thread

    from support.backends import running_proxy

    server = ThreadingHTTPServer((LOOPBACK, 0), _EchoPath)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        url = f"http://{LOOPBACK}:{server.server_address[1]}"
        doc = {
            "http": {
                "routers": {
                    "bob": {"rule": "PathPrefix(`/user/bob/`)", "service": "s", "priority": 50},
                    "all": {"rule": "PathPrefix(`/`)", "service": "s", "priority": 1},
                },
                "services": {"s": {"loadBalancer": {"servers": [{"url": url}]}}},
            }
        }
        await anyio.to_thread.run_sync(traefik.apply, doc)
        table, problems = RoutingTable.build(parse_dynamic_config(doc)[0])
        assert problems == []
        requests = [("h", t) for t in FORWARD_TARGETS]
        theirs = await anyio.to_thread.run_sync(_ask_traefik, traefik.web_port, requests)
        async with running_proxy(table) as proxy:
            ours = await anyio.to_thread.run_sync(_ask_traefik, proxy.port, requests)
        routed = [table.lookup("h", t.encode()) for t in FORWARD_TARGETS]
        mismatches = [
            (target, our, their)
            for target, our, their in zip(FORWARD_TARGETS, ours, theirs, strict=True)
            if _unreserved_decoded(our) != their
        ]
        assert not mismatches, mismatches
        assert [r.router if r else None for r in routed].count("bob") >= 15
    finally:
        server.shutdown()
        server.server_close()
