"""The conformance tests. A project runs them with ``from eventproxy.testing.suite import *``.

Every test drives the real JupyterHub ``Proxy`` API of the implementation and proves the result
with real HTTP (and WebSockets) through the proxy's public URL to loopback echo backends, which
report the path, Host and headers they received. Documented differences of known
implementations are marked here with ``proxy_difference``; other projects declare theirs in
``ProxyUnderTest.known_differences``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from ._backends import EchoBackend
from ._client import Reply, WebSocketClient, http_request
from ._contract import ProxyUnderTest
from .plugin import Backends, record_detail

__all__ = [
    "test_add_get_delete",
    "test_add_route_does_not_mutate_data",
    "test_check_routes",
    "test_concurrent_adds",
    "test_data_round_trip",
    "test_delete_route_is_idempotent",
    "test_get_route_missing_is_none",
    "test_host_and_origin_preserved",
    "test_host_route_on_path_proxy_is_value_error",
    "test_host_routing",
    "test_hostile_routespec",
    "test_jupyterhub_escaped_names",
    "test_last_activity",
    "test_longest_prefix_wins",
    "test_only_own_routes",
    "test_other_spellings_of_escaped_names",
    "test_persistence_across_restart",
    "test_prefix_is_segment_bounded",
    "test_readd_replaces_target",
    "test_request_without_trailing_slash",
    "test_routespec_trailing_slash_added",
    "test_target_without_port",
    "test_websocket_echo",
]

CHP = "configurable-http-proxy"
proxy_difference = pytest.mark.proxy_difference
needs = pytest.mark.conformance_needs


def _lacks(put: ProxyUnderTest, feature: str, why: str) -> NoReturn:
    """Skip: ``put`` says at run time that it lacks ``feature`` (a lack known in advance is
    declared with ``conformance_lacks`` instead, and the test is not generated)."""
    pytest.skip(
        f"{put.label} {why} (mark its factory's param conformance_lacks({feature!r}) so that "
        "this test is not generated)"
    )


@dataclass(frozen=True, slots=True)
class Case:
    """A parameter of a suite test; ``conformance_id`` names it in reports and differences."""

    conformance_id: str
    value: str


async def _get(
    put: ProxyUnderTest,
    target: str,
    *,
    host: str | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    return await http_request(put.public_url, target, host=host, headers=headers)


async def _backend_of(put: ProxyUnderTest, target: str, *, host: str | None = None) -> str | None:
    """Which echo backend answered a GET of ``target``.

    ``None``: no route matched; the proxy answered itself, or fetched its error page from the
    hub (configurable-http-proxy's ``--error-target``: the hub sees ``/hub/error/404?...``).
    """
    reply = await _get(put, target, host=host)
    name = reply.backend
    if name == "hub" and reply.target != target:
        assert reply.status >= 400, reply
        return None
    if name is not None:
        assert reply.status == 200, reply
        # The path reaches the backend as the client wrote it: JupyterHub's servers expect
        # the full prefix.
        assert reply.target == target, (reply.target, target)
    return name


def _data_without_activity(route: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in route["data"].items() if k != "last_activity"}


# -- basic API ----------------------------------------------------------------------------


async def test_add_get_delete(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """add_route makes a route that real requests reach; get_route/get_all_routes show it;
    delete_route removes it and requests stop reaching the backend."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    alice = await conformance_backends.start("alice")
    spec = "/user/alice/"
    await proxy.add_route(spec, alice.url, {"user": "alice", "server_name": ""})

    reply = await _get(put, "/user/alice/lab/tree?token=abc&x=%2F")
    assert (reply.status, reply.backend) == (200, "alice")
    assert reply.target == "/user/alice/lab/tree?token=abc&x=%2F"  # path and query unchanged
    assert await _backend_of(put, "/user/alice/") == "alice"

    route = await proxy.get_route(spec)
    assert route is not None
    assert route["routespec"] == spec
    assert route["target"] == alice.url
    assert _data_without_activity(route) == {"user": "alice", "server_name": ""}
    routes = await proxy.get_all_routes()
    assert spec in routes
    assert routes[spec]["routespec"] == spec and routes[spec]["target"] == alice.url

    await proxy.delete_route(spec)
    assert await proxy.get_route(spec) is None
    assert spec not in await proxy.get_all_routes()
    before = len(alice.seen)
    assert await _backend_of(put, "/user/alice/lab") != "alice"
    assert len(alice.seen) == before


async def test_routespec_trailing_slash_added(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """A routespec without a trailing slash is stored (and returned) with one, as JupyterHub's
    Proxy.validate_routespec does."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    bob = await conformance_backends.start("bob")
    await proxy.add_route("/user/bob", bob.url, {})
    routes = await proxy.get_all_routes()
    assert "/user/bob/" in routes and "/user/bob" not in routes
    assert (await proxy.get_route("/user/bob"))["routespec"] == "/user/bob/"
    assert await _backend_of(put, "/user/bob/tree") == "bob"
    await proxy.delete_route("/user/bob")
    assert await proxy.get_route("/user/bob/") is None


async def test_get_route_missing_is_none(conformance_proxy: ProxyUnderTest) -> None:
    """get_route of a routespec that was never added returns None."""
    assert await conformance_proxy.proxy.get_route("/user/nobody/") is None


async def test_delete_route_is_idempotent(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """Deleting a route that does not exist, or twice, is not an error."""
    proxy = conformance_proxy.proxy
    carol = await conformance_backends.start("carol")
    await proxy.delete_route("/user/never-added/")
    await proxy.add_route("/user/carol/", carol.url, {})
    await proxy.delete_route("/user/carol/")
    await proxy.delete_route("/user/carol/")
    assert await proxy.get_route("/user/carol/") is None


async def test_readd_replaces_target(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """add_route on an existing routespec replaces its target and data (JupyterHub relies on
    this when a server moves)."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    old = await conformance_backends.start("old")
    new = await conformance_backends.start("new")
    await proxy.add_route("/user/dave/", old.url, {"user": "dave", "v": 1})
    assert await _backend_of(put, "/user/dave/x") == "old"
    await proxy.add_route("/user/dave/", new.url, {"user": "dave", "v": 2})
    assert await _backend_of(put, "/user/dave/x") == "new"
    route = await proxy.get_route("/user/dave/")
    assert route is not None and route["target"] == new.url
    assert _data_without_activity(route) == {"user": "dave", "v": 2}
    assert list(await proxy.get_all_routes()).count("/user/dave/") == 1


# -- matching ------------------------------------------------------------------------------


async def test_longest_prefix_wins(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """Overlapping routes: the longest matching prefix wins (/ < /user/a/ < /user/a/b/),
    whatever the order they were added in; deleting the longest falls back to the next."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    a = await conformance_backends.start("a")
    ab = await conformance_backends.start("ab")
    await proxy.add_route("/user/a/b/", ab.url, {})
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/user/a/", a.url, {})
    expected = {
        "/user/a/b/c": "ab",
        "/user/a/b/": "ab",
        "/user/a/bc": "a",
        "/user/a/x/b/": "a",
        "/user/a/": "a",
        "/user/b/": "root",
        "/other": "root",
        "/": "root",
    }
    got = {target: await _backend_of(put, target) for target in expected}
    assert got == expected
    await proxy.delete_route("/user/a/b/")
    assert await _backend_of(put, "/user/a/b/c") == "a"


async def test_prefix_is_segment_bounded(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """/user/a/ never captures /user/ab/... (another user whose name starts the same)."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    a = await conformance_backends.start("a")
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/user/a/", a.url, {})
    assert await _backend_of(put, "/user/ab/") == "root"
    assert await _backend_of(put, "/user/ab") == "root"
    assert await _backend_of(put, "/user/a/") == "a"
    # Without the trailing slash: the user's route or the default one, never anything else
    # (which of the two: test_request_without_trailing_slash).
    assert await _backend_of(put, "/user/a") in ("a", "root")


async def test_request_without_trailing_slash(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """A request for /user/a (no trailing slash) reaches the /user/a/ route and /user/a/b the
    named server /user/a/b/ (not /user/a/), as with configurable-http-proxy (JupyterHub's
    reference proxy); /user/ab reaches /user/ab/ and /user/abc neither."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    a = await conformance_backends.start("a")
    ab = await conformance_backends.start("ab")
    named = await conformance_backends.start("named")
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/user/a/", a.url, {})
    await proxy.add_route("/user/a/b/", named.url, {})
    await proxy.add_route("/user/ab/", ab.url, {})
    expected = {
        "/user/a": "a",
        "/user/a?x=1": "a",
        "/user/a/b": "named",
        "/user/a/b?x=1": "named",
        "/user/a/bc": "a",
        "/user/ab": "ab",
        "/user/abc": "root",
    }
    got = {target: await _backend_of(put, target) for target in expected}
    assert got == expected


# -- host routing ---------------------------------------------------------------------------


async def test_host_routing(
    conformance_host_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """Host routing: the Host header the client sends (with or without a port) selects the
    route; a path route on a host-routing proxy is a ValueError."""
    put, proxy = conformance_host_proxy, conformance_host_proxy.proxy
    hub = await conformance_backends.start("hubroute")
    alice = await conformance_backends.start("alice")
    bob = await conformance_backends.start("bob")
    await proxy.add_route("example.test/", hub.url, {"hub": True})
    await proxy.add_route("alice.example.test/user/alice/", alice.url, {"user": "alice"})
    await proxy.add_route("bob.example.test/user/bob/", bob.url, {"user": "bob"})
    routes = await proxy.get_all_routes()
    assert {"example.test/", "alice.example.test/user/alice/", "bob.example.test/user/bob/"} <= set(
        routes
    )
    assert await _backend_of(put, "/user/alice/lab", host="alice.example.test") == "alice"
    assert await _backend_of(put, "/user/alice/lab", host="alice.example.test:8000") == "alice"
    assert await _backend_of(put, "/user/bob/lab", host="bob.example.test") == "bob"
    assert await _backend_of(put, "/user/alice/lab", host="bob.example.test") != "alice"
    assert await _backend_of(put, "/user/alice/lab", host="example.test") == "hubroute"
    assert await _backend_of(put, "/hub/home", host="example.test") == "hubroute"
    assert await _backend_of(put, "/user/alice/lab", host="evil.test") not in ("alice", "bob")
    reply = await _get(put, "/user/alice/lab", host="alice.example.test:8000")
    assert reply.received_header("host") == "alice.example.test:8000"
    with pytest.raises(ValueError):
        await proxy.add_route("/user/carol/", alice.url, {})
    await proxy.delete_route("alice.example.test/user/alice/")
    assert await _backend_of(put, "/user/alice/lab", host="alice.example.test") != "alice"


async def test_host_route_on_path_proxy_is_value_error(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """A host routespec on a proxy without host routing raises ValueError (JupyterHub's
    Proxy.validate_routespec)."""
    proxy = conformance_proxy.proxy
    alice = await conformance_backends.start("alice")
    with pytest.raises(ValueError):
        await proxy.add_route("alice.example.test/user/alice/", alice.url, {})
    assert "alice.example.test/user/alice/" not in await proxy.get_all_routes()


# -- headers and websockets --------------------------------------------------------------------


async def test_host_and_origin_preserved(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """The backend receives the client's Host and Origin headers unchanged (Jupyter servers
    check Origin against Host), and other end-to-end headers too."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    alice = await conformance_backends.start("alice")
    await proxy.add_route("/user/alice/", alice.url, {})
    sent = (
        ("origin", "https://hub.example.test:8443"),
        ("x-custom", "Value With  Spaces"),
        ("cookie", "jupyterhub-user-alice=abc; _xsrf=2|x|y"),
        ("authorization", "token secret"),
    )
    reply = await _get(put, "/user/alice/api/contents", host="hub.example.test:8443", headers=sent)
    assert reply.backend == "alice"
    assert reply.received_header("host") == "hub.example.test:8443"
    for name, value in sent:
        assert reply.received_header(name) == value, name


async def test_websocket_echo(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """WebSocket upgrade through the proxy; text, binary and a 256 KiB message are echoed;
    the backend sees the path, Host and Origin the client sent."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    kernel = await conformance_backends.start("kernel")
    await proxy.add_route("/user/ws/", kernel.url, {})
    target = "/user/ws/api/kernels/1f2e/channels?session_id=abc"
    async with await WebSocketClient.connect(
        put.public_url,
        target,
        host="hub.example.test",
        headers=(("Origin", "https://hub.example.test"),),
    ) as client:
        await client.send("hello ☃")
        assert await client.receive() == "hello ☃"
        await client.send(b"\x00\x01\xfe\xff")
        assert await client.receive() == b"\x00\x01\xfe\xff"
        big = bytes(range(256)) * 1024
        await client.send(big)
        assert await client.receive() == big
    (handshake,) = [s for s in kernel.seen if s.websocket]
    assert handshake.target == target
    assert handshake.header("host") == "hub.example.test"
    assert handshake.header("origin") == "https://hub.example.test"


# -- scale and reconciliation ------------------------------------------------------------------


async def test_concurrent_adds(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """100 concurrent add_route calls: all listed and all routed to the right backend; then
    100 concurrent delete_route calls leave none."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    backends = [await conformance_backends.start(f"b{i}") for i in range(10)]
    specs = {f"/user/u{i:03d}/": backends[i % 10] for i in range(100)}
    await asyncio.gather(
        *(proxy.add_route(s, b.url, {"user": s.split("/")[2]}) for s, b in specs.items())
    )
    routes = await proxy.get_all_routes()
    assert set(specs) <= set(routes)
    for spec, backend in specs.items():
        assert routes[spec]["target"] == backend.url
        assert await _backend_of(put, f"{spec}api") == backend.name
    await asyncio.gather(*(proxy.delete_route(s) for s in specs))
    assert not set(specs) & set(await proxy.get_all_routes())


def _user(name: str, host: str, *, server_name: str = "") -> Any:
    """A stand-in for JupyterHub's User with one ready spawner (what check_routes reads)."""
    from jupyterhub.utils import url_escape_path

    spec = f"/user/{url_escape_path(name)}/"
    spawner = SimpleNamespace(
        ready=True,
        pending=None,
        proxy_spec=spec,
        server=SimpleNamespace(host=host),
        _log_name=f"{name}:{server_name}",
    )
    return SimpleNamespace(name=name, proxy_spec=spec, spawners={server_name: spawner})


@needs("check_routes")
async def test_check_routes(
    conformance_proxy: ProxyUnderTest,
    conformance_backends: Backends,
    conformance_hub: EchoBackend,
) -> None:
    """check_routes adds the hub, missing users and services, fixes a wrong target, deletes a
    stale route; a second run changes nothing."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    if not put.capabilities.check_routes:
        _lacks(put, "check_routes", "declares check_routes not drivable with stand-ins")
    alice = await conformance_backends.start("alice")
    bob = await conformance_backends.start("bob")
    svc = await conformance_backends.start("svc")
    wrong = await conformance_backends.start("wrong")
    ghost = await conformance_backends.start("ghost")
    await proxy.add_route("/user/alice/", wrong.url, {"user": "alice", "server_name": ""})
    await proxy.add_route("/user/ghost/", ghost.url, {"user": "ghost", "server_name": ""})
    users = {1: _user("alice", alice.url), 2: _user("bob", bob.url)}
    service = SimpleNamespace(
        name="svc", server=SimpleNamespace(host=svc.url), proxy_spec="/services/svc/"
    )
    await proxy.check_routes(users, {"svc": service})
    routes = await proxy.get_all_routes()
    hub_spec = proxy.app.hub.routespec
    assert set(routes) == {hub_spec, "/user/alice/", "/user/bob/", "/services/svc/"}
    assert routes["/user/alice/"]["target"] == alice.url
    assert routes[hub_spec]["target"] == conformance_hub.url
    assert await _backend_of(put, "/user/alice/lab") == "alice"
    assert await _backend_of(put, "/user/bob/lab") == "bob"
    assert await _backend_of(put, "/services/svc/x") == "svc"
    assert await _backend_of(put, "/user/ghost/lab") == "hub"
    await proxy.check_routes(users, {"svc": service})
    again = await proxy.get_all_routes()
    assert {k: (v["target"], _data_without_activity(v)) for k, v in again.items()} == {
        k: (v["target"], _data_without_activity(v)) for k, v in routes.items()
    }


# -- names and hostile input -------------------------------------------------------------------

_NAMES = [
    Case("unicode", "秀樹"),
    Case("at", "has@"),
    Case("tilde", "~TestJH"),
    Case("space", "has space"),
    Case("percent", "100%real"),
    Case("named-server-specials", "walnut/$p~c|a! ch@rs"),
    Case("named-server-hash-question", "walnut/#?"),
]


def _spec_of(case: Case) -> str:
    from jupyterhub.utils import url_escape_path

    user, _, server = case.value.partition("/")
    spec = f"/user/{url_escape_path(user)}/"
    return f"{spec}{url_escape_path(server)}/" if server else spec


@pytest.mark.parametrize("case", _NAMES, ids=[c.conformance_id for c in _NAMES])
async def test_jupyterhub_escaped_names(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends, case: Case
) -> None:
    """Usernames and server names exactly as JupyterHub escapes them (url_escape_path): the
    routespec is returned byte-identical and requests written with the same escaping reach
    the right server, next to all the other names."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    walnut = await conformance_backends.start("walnut-default")
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/user/walnut/", walnut.url, {"user": "walnut"})
    backends = {}
    for other in _NAMES:
        backend = await conformance_backends.start(other.conformance_id)
        backends[other.conformance_id] = backend
        await proxy.add_route(_spec_of(other), backend.url, {"name": other.value})
    spec = _spec_of(case)
    if case.conformance_id == "named-server-specials":
        assert spec == "/user/walnut/%24p~c%7Ca%21%20ch@rs/"
    if case.conformance_id == "named-server-hash-question":
        assert spec == "/user/walnut/%23%3F/"
    routes = await proxy.get_all_routes()
    assert spec in routes, sorted(routes)
    assert routes[spec]["routespec"] == spec
    assert routes[spec]["data"]["name"] == case.value
    assert await _backend_of(put, spec) == case.conformance_id
    assert await _backend_of(put, f"{spec}lab/tree/a%20b.ipynb") == case.conformance_id
    await proxy.delete_route(spec)
    assert spec not in await proxy.get_all_routes()
    assert await _backend_of(put, f"{spec}lab") in ("walnut-default", "root")


_TRAEFIK = ("eventproxy[traefik-file]", "eventproxy[traefik-etcd]")


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(
            Case("dollar", "/user/walnut/$p~c|a!%20ch@rs/"),
            id="dollar",
            marks=[
                proxy_difference(
                    *_TRAEFIK,
                    reason="traefik 3.7 routes on a path that keeps escapes of reserved "
                    "characters, and Go re-escapes a target holding a raw '|' (the '!' becomes "
                    "%21): this mixed spelling matches neither spelling the rule carries "
                    "(JupyterHub's, or all-raw); see docs/traefik.md",
                )
            ],
        ),
        pytest.param(
            Case("lowercase-escapes", "/user/walnut/%24p~c%7ca%21%20ch@rs/"),
            id="lowercase-escapes",
            marks=[
                proxy_difference(
                    *_TRAEFIK,
                    reason="routed to the same server, but traefik forwards the path "
                    "re-encoded with upper-case hex (%7c arrives as %7C)",
                )
            ],
        ),
    ],
)
async def test_other_spellings_of_escaped_names(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends, case: Case
) -> None:
    """A request that spells an escaped name differently (a raw $ for %24, lowercase hex)
    reaches the same server: both decode to the same path, as browsers and servers treat
    them."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    named = await conformance_backends.start("named")
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/user/walnut/%24p~c%7Ca%21%20ch@rs/", named.url, {})
    assert await _backend_of(put, "/user/walnut/%24p~c%7Ca%21%20ch@rs/lab") == "named"
    assert await _backend_of(put, f"{case.value}lab") == "named"


_HOSTILE = [
    Case("dot-dot", "/user/../hub/"),
    Case("encoded-dot-dot", "/user/%2e%2e/hub/"),
    Case("encoded-slash", "/user/%2F/"),
    Case("rule-injection", "/x`) || PathPrefix(`/hub"),
    Case("crlf", "/user/x\r\nX-Injected: 1/"),
    Case("encoded-crlf", "/user/x%0D%0AX-Injected:%201/"),
    Case("empty-segment", "/user//"),
]
# What configurable-http-proxy (through JupyterHub's ConfigurableHTTPProxy) does with them.
_CHP_CAPTURES = {
    "dot-dot": "the route is stored as /hub/ (the dot segment is resolved on the way to CHP's "
    "API) and captures the hub's traffic",
    "encoded-dot-dot": "%2e%2e is decoded and resolved on the way to CHP's API: the route is "
    "stored as /hub/ and captures the hub's traffic",
    "encoded-slash": "the route is stored as /user/ and captures every user without a route of "
    "their own",
    "empty-segment": "the route is stored as /user/ and captures every user without a route of "
    "their own",
}


def _hostile_param(case: Case) -> Any:
    reason = _CHP_CAPTURES.get(case.conformance_id)
    marks = [] if reason is None else [proxy_difference(CHP, reason=reason)]
    return pytest.param(case, id=case.conformance_id, marks=marks)


@pytest.mark.parametrize("case", [_hostile_param(c) for c in _HOSTILE])
async def test_hostile_routespec(
    request: pytest.FixtureRequest,
    conformance_proxy: ProxyUnderTest,
    conformance_backends: Backends,
    case: Case,
) -> None:
    """A hostile routespec is either refused with ValueError at add_route, or accepted without
    capturing anybody else's traffic (hub, other users, default route)."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    root = await conformance_backends.start("root")
    hub = await conformance_backends.start("hubroute")
    bob = await conformance_backends.start("bob")
    attacker = await conformance_backends.start("attacker")
    await proxy.add_route("/", root.url, {})
    await proxy.add_route("/hub/", hub.url, {"hub": True})
    await proxy.add_route("/user/bob/", bob.url, {"user": "bob"})
    try:
        await proxy.add_route(case.value, attacker.url, {"user": "mallory"})
    except ValueError as exc:
        accepted = False
        assert str(exc)
    else:
        accepted = True
    victims = {
        "/": "root",
        "/hub/": "hubroute",
        "/hub/login": "hubroute",
        "/hub/api/users": "hubroute",
        "/user/bob/lab": "bob",
        "/user/carol/lab": "root",
        "/user/x/lab": "root",
        "/x": "root",
        "/user/": "root",
    }
    got = {target: await _backend_of(put, target) for target in victims}
    captured = sorted(t for t, name in got.items() if name == "attacker")
    if not accepted:
        record_detail(request, "refused with ValueError")
    elif captured:
        record_detail(request, f"accepted; captures {', '.join(captured)}")
    else:
        record_detail(request, "accepted; captures nothing")
    assert got == victims
    assert attacker.seen == []
    routes = await proxy.get_all_routes()
    assert routes["/hub/"]["target"] == hub.url
    assert routes["/user/bob/"]["target"] == bob.url


# -- data ---------------------------------------------------------------------------------------

_DATA: dict[str, Any] = {
    "user": "秀樹",
    "server_name": "",
    "flag": True,
    "off": False,
    "count": 3,
    "ratio": 1.5,
    "nothing": None,
    "nested": {"list": [1, "two", None, False], "empty": {}},
    "Mixed-Case Key ☃": "value",
}


async def test_data_round_trip(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """data is returned unchanged: same keys (byte-identical), same types (bool stays bool,
    None stays None), nested values intact; only last_activity may be added."""
    proxy = conformance_proxy.proxy
    alice = await conformance_backends.start("alice")
    await proxy.add_route("/user/alice/", alice.url, {**_DATA, "nested": dict(_DATA["nested"])})
    for route in (
        await proxy.get_route("/user/alice/"),
        (await proxy.get_all_routes())["/user/alice/"],
    ):
        assert route is not None
        data = _data_without_activity(route)
        assert data == _DATA
        assert list(data) == list(_DATA) or sorted(data) == sorted(_DATA)
        for key, value in _DATA.items():
            assert type(data[key]) is type(value), key


@proxy_difference(
    CHP,
    reason="JupyterHub's ConfigurableHTTPProxy.add_route writes 'target' and 'jupyterhub' "
    "into the caller's data dict (harmless for JupyterHub, which passes a fresh dict)",
)
async def test_add_route_does_not_mutate_data(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """add_route leaves the caller's data dict as it was."""
    proxy = conformance_proxy.proxy
    alice = await conformance_backends.start("alice")
    data = {"user": "alice", "server_name": ""}
    await proxy.add_route("/user/alice/", alice.url, data)
    assert data == {"user": "alice", "server_name": ""}


@needs("foreign_routes")
async def test_only_own_routes(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """get_all_routes returns only the routes JupyterHub added, not other routes the
    proxy serves."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    if put.add_foreign_route is None:
        _lacks(put, "foreign_routes", "has no routes other than JupyterHub's")
    other = await conformance_backends.start("other")
    mine = await conformance_backends.start("mine")
    await put.add_foreign_route("/not-jupyterhub/", other.url)
    await proxy.add_route("/user/mine/", mine.url, {})
    assert await _backend_of(put, "/not-jupyterhub/x") == "other"  # it is served...
    routes = await proxy.get_all_routes()
    assert "/user/mine/" in routes
    assert "/not-jupyterhub/" not in routes  # ...but it is not JupyterHub's


@needs("restart")
@proxy_difference(
    CHP,
    reason="routes live in the node process's memory only; after a restart JupyterHub "
    "re-adds them (check_routes), and requests fail until it does",
)
async def test_persistence_across_restart(
    conformance_proxy: ProxyUnderTest,
    conformance_backends: Backends,
    conformance_hub: EchoBackend,
) -> None:
    """After the proxy is restarted on the same storage, its routes (and deletions) are still
    listed, with their data, and still served; check_routes then changes nothing."""
    put = conformance_proxy
    if put.restart is None:
        _lacks(put, "restart", "declares no restart")
    alice = await conformance_backends.start("alice")
    bob = await conformance_backends.start("bob")
    await put.proxy.add_route(put.proxy.app.hub.routespec, conformance_hub.url, {"hub": True})
    await put.proxy.add_route("/user/alice/", alice.url, {"user": "alice", "server_name": ""})
    await put.proxy.add_route("/user/bob/", bob.url, {"user": "bob", "server_name": ""})
    await put.proxy.delete_route("/user/bob/")
    before = await put.proxy.get_all_routes()
    await put.restart_proxy()
    after = await put.proxy.get_all_routes()
    assert set(after) == set(before)
    assert after["/user/alice/"]["target"] == alice.url
    assert _data_without_activity(after["/user/alice/"]) == {"user": "alice", "server_name": ""}
    assert await _backend_of(put, "/user/alice/lab") == "alice"
    assert await _backend_of(put, "/user/bob/lab") != "bob"
    if put.capabilities.check_routes:
        await put.proxy.check_routes({1: _user("alice", alice.url)}, {})
        checked = await put.proxy.get_all_routes()
        assert {k: (v["target"], _data_without_activity(v)) for k, v in checked.items()} == {
            k: (v["target"], _data_without_activity(v)) for k, v in after.items()
        }


async def test_target_without_port(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """A target URL without an explicit port (``https://host``, valid for JupyterHub's
    extra_routes) is stored and returned unchanged, and does not break the other routes,
    before or after a restart."""
    put = conformance_proxy
    alice = await conformance_backends.start("alice")
    await put.proxy.add_route("/user/alice/", alice.url, {"user": "alice"})
    await put.proxy.add_route("/extra/", "https://example.invalid", {"extra": True})
    route = await put.proxy.get_route("/extra/")
    assert route is not None and route["target"] == "https://example.invalid"
    assert await _backend_of(put, "/user/alice/lab") == "alice"
    if put.restart is not None and put.persistent:
        await put.restart_proxy()
        route = await put.proxy.get_route("/extra/")
        assert route is not None and route["target"] == "https://example.invalid"
        assert await _backend_of(put, "/user/alice/lab") == "alice"


@needs("last_activity")
async def test_last_activity(
    conformance_proxy: ProxyUnderTest, conformance_backends: Backends
) -> None:
    """After traffic, route data has last_activity: an ISO 8601 UTC time not before the
    request (JupyterHub's activity tracking and idle culling read it)."""
    put, proxy = conformance_proxy, conformance_proxy.proxy
    if not put.capabilities.last_activity:
        _lacks(put, "last_activity", "declares no last_activity")
    alice = await conformance_backends.start("alice")
    await proxy.add_route("/user/alice/", alice.url, {"user": "alice"})
    # Clocks are read at millisecond resolution on both sides; allow that much.
    sent_at = datetime.now(UTC) - timedelta(milliseconds=5)
    assert await _backend_of(put, "/user/alice/api/status") == "alice"
    deadline = time.monotonic() + 10
    while True:
        route = await proxy.get_route("/user/alice/")
        assert route is not None
        raw = route["data"].get("last_activity")
        if raw is not None:
            assert isinstance(raw, str), raw
            when = datetime.fromisoformat(raw)
            assert when.utcoffset() == timedelta(0), raw
            if when >= sent_at:
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"no last_activity after {sent_at.isoformat()}: {route}")
        await asyncio.sleep(0.05)  # polling a real condition, bounded by the deadline


# The tests are imported into other modules, whose module-level ``pytestmark`` would not carry
# over: mark each function itself as an anyio (asyncio) test.
for _name in __all__:
    globals()[_name] = pytest.mark.anyio(globals()[_name])
del _name
