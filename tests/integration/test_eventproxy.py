"""EventProxy specifics, with real sockets: visibility on return, group commit, persistence,
TLS, host routing, errors. (The shared conformance suite covers the common proxy behaviour.)

EventProxy lives in JupyterHub's asyncio loop, so these tests run on asyncio only.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from eventproxy import EventProxy, EventProxyError, open_log
from support import free_port, require_binary

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            host = next(
                (
                    h.split(b":", 1)[1].strip().decode()
                    for h in head.split(b"\r\n")
                    if h.lower().startswith(b"host:")
                ),
                "",
            )
            body = f"{name} {line} host={host}".encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, str]]:
    servers = {}
    urls = {}
    for name in ("alice", "bob", "hub"):
        server = await asyncio.start_server(lambda r, w, n=name: _handle(r, w, n), "127.0.0.1", 0)
        servers[name] = server
        urls[name] = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield urls
    for server in servers.values():
        server.close()


def make_proxy(log_url: str, **kwargs: Any) -> EventProxy:
    return EventProxy(public_url=f"http://127.0.0.1:{free_port()}/", log_url=log_url, **kwargs)


async def test_route_is_served_the_moment_add_route_returns(
    tmp_path: Path, backends: dict[str, str]
) -> None:
    proxy = make_proxy(f"file://{tmp_path}/routes.log")
    await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            for i in range(50):
                await proxy.add_route(f"/user/u{i}/", backends["alice"], {"i": i})
                r = await client.get(f"/user/u{i}/tree")  # no wait, no retry
                assert r.status_code == 200 and r.text.startswith(f"alice GET /user/u{i}/tree")
                await proxy.delete_route(f"/user/u{i}/")
                r = await client.get(f"/user/u{i}/tree")
                assert r.status_code == 404
    finally:
        await proxy.stop()


async def test_concurrent_adds_are_group_committed(
    tmp_path: Path, backends: dict[str, str]
) -> None:
    proxy = make_proxy(f"file://{tmp_path}/routes.log")
    await proxy.start()
    try:
        await asyncio.gather(
            *(
                proxy.add_route(f"/user/u{i}/", backends["bob"], {"user": f"u{i}"})
                for i in range(300)
            )
        )
        routes = await proxy.get_all_routes()
        assert len(routes) == 300
    finally:
        await proxy.stop()
    async with await open_log(f"file://{tmp_path}/routes.log", readonly=True) as log:
        records = await log.read()
    assert [r.seq for r in records] == list(range(1, 301))
    batches = len({r.ts for r in records})
    assert batches < 300 / 2, f"{batches} appends for 300 concurrent adds: no group commit"


async def test_routes_and_data_survive_a_restart(tmp_path: Path, backends: dict[str, str]) -> None:
    url = f"file://{tmp_path}/routes.log"
    data = {"user": "alice", "server_name": "", "flag": True, "n": 1, "nested": {"l": [1.5]}}
    proxy = make_proxy(url)
    await proxy.start()
    await proxy.add_route("/user/alice/", backends["alice"], data)
    await proxy.add_route("/", backends["hub"], {"hub": True})
    before = await proxy.get_all_routes()
    await proxy.stop()

    proxy = make_proxy(url)
    await proxy.start()
    try:
        after = await proxy.get_all_routes()
        assert after == before
        assert repr(after["/user/alice/"]["data"]) == repr(data)
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            assert (await client.get("/user/alice/lab")).text.startswith("alice")
            assert (await client.get("/hub/home")).text.startswith("hub")
    finally:
        await proxy.stop()


async def test_returned_data_is_a_copy(backends: dict[str, str]) -> None:
    proxy = make_proxy("memory://")
    await proxy.add_route("/user/a/", backends["alice"], {"l": [1]})
    routes = await proxy.get_all_routes()
    routes["/user/a/"]["data"]["l"].append(2)
    assert (await proxy.get_route("/user/a/"))["data"] == {"l": [1]}  # type: ignore[index]
    assert await proxy.get_route("/user/zzz/") is None


async def test_last_activity_after_traffic(backends: dict[str, str]) -> None:
    proxy = make_proxy("memory://")
    await proxy.start()
    try:
        await proxy.add_route("/user/a/", backends["alice"], {"user": "a"})
        assert "last_activity" not in (await proxy.get_all_routes())["/user/a/"]["data"]
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            assert (await client.get("/user/a/api")).status_code == 200
        data = (await proxy.get_all_routes())["/user/a/"]["data"]
        from datetime import UTC, datetime

        last = datetime.fromisoformat(data["last_activity"].replace("Z", "+00:00"))
        assert (datetime.now(UTC) - last).total_seconds() < 60
    finally:
        await proxy.stop()


async def test_host_routing(backends: dict[str, str]) -> None:
    proxy = make_proxy("memory://", host_routing=True)
    await proxy.start()
    try:
        await proxy.add_route("/", backends["hub"], {"hub": True})  # the hub route: always "/"
        await proxy.add_route("alice.example.org/user/alice/", backends["alice"], {})
        await proxy.add_route("bob.example.org/user/bob/", backends["bob"], {})
        with pytest.raises(ValueError, match="host routing is enabled"):
            await proxy.add_route("/user/carol/", backends["bob"], {})
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            r = await client.get("/user/alice/x", headers={"Host": "Alice.Example.org:8000"})
            assert r.text.startswith("alice") and "host=Alice.Example.org:8000" in r.text
            r = await client.get("/user/alice/x", headers={"Host": "bob.example.org"})
            assert r.text.startswith("hub")
    finally:
        await proxy.stop()


@pytest.mark.parametrize(
    ("before", "after", "old_spec", "new_spec"),
    [
        (False, True, "/user/alice/", "alice.example.org/user/alice/"),
        (True, False, "alice.example.org/user/alice/", "/user/alice/"),
    ],
    ids=["host-routing-turned-on", "host-routing-turned-off"],
)
async def test_routes_of_the_other_mode_can_be_read_and_deleted(
    tmp_path: Path,
    backends: dict[str, str],
    before: bool,
    after: bool,
    old_spec: str,
    new_spec: str,
) -> None:
    """A route in the table can be read and deleted whatever the host-routing mode: a hub that
    switches modes finds the old routes in its log, reads them and deletes them (JupyterHub's
    check_routes does). Adding, and naming a route that is not there, check the mode."""
    url = f"file://{tmp_path}/routes.log"
    proxy = make_proxy(url, host_routing=before)
    await proxy.start()
    await proxy.add_route("/", backends["hub"], {"hub": True})
    await proxy.add_route(old_spec, backends["alice"], {"user": "alice"})
    await proxy.stop()

    proxy = make_proxy(url, host_routing=after)
    await proxy.start()
    try:
        route = await proxy.get_route(old_spec)
        assert route is not None and route["target"] == backends["alice"]
        assert old_spec in await proxy.get_all_routes()
        with pytest.raises(ValueError, match=r"host routing is (en|dis)abled"):
            await proxy.add_route(old_spec, backends["alice"], {})  # adding checks the mode
        await proxy.delete_route(old_spec)
        # Gone: now a routespec of the other mode is a ValueError again, as JupyterHub's
        # test_add_get_delete expects of get_route and delete_route.
        with pytest.raises(ValueError, match=r"host routing is (en|dis)abled"):
            await proxy.get_route(old_spec)
        with pytest.raises(ValueError, match=r"host routing is (en|dis)abled"):
            await proxy.delete_route(old_spec)
        await proxy.add_route(new_spec, backends["alice"], {"user": "alice"})
        assert set(await proxy.get_all_routes()) == {"/", new_spec}
        with pytest.raises(ValueError, match="dot segment"):
            await proxy.delete_route("/user/../hub/")  # a bad routespec is still refused
    finally:
        await proxy.stop()
    async with await open_log(url, readonly=True) as log:
        records = await log.read()
    assert [(r.event.kind, r.event.routespec) for r in records[-2:]] == [
        ("route_removed", old_spec),
        ("route_added", new_spec),
    ]


async def test_bad_input_is_refused_and_nothing_is_logged(tmp_path: Path) -> None:
    proxy = make_proxy(f"file://{tmp_path}/routes.log")
    await proxy.start()
    try:
        for spec in ("/user/../hub/", "/user/%2F/", "/x`) || PathPrefix(`/hub", "/a\r\nb/"):
            with pytest.raises(ValueError):
                await proxy.add_route(spec, "http://127.0.0.1:1", {})
        with pytest.raises(ValueError, match="host routing is disabled"):
            await proxy.add_route("h.example.org/x/", "http://127.0.0.1:1", {})
        with pytest.raises(ValueError, match="http:// or https://"):
            await proxy.add_route("/user/a/", "not-a-url", {})
        with pytest.raises(ValueError, match="set"):
            await proxy.add_route("/user/a/", "http://127.0.0.1:1", {"x": {1}})
        await proxy.delete_route("/user/never/")  # idempotent, records nothing
        assert await proxy.get_all_routes() == {}
    finally:
        await proxy.stop()
    async with await open_log(f"file://{tmp_path}/routes.log", readonly=True) as log:
        assert await log.head() == 0


async def test_other_data_planes_are_refused_clearly() -> None:
    proxy = make_proxy("memory://", data_plane="external")
    with pytest.raises(EventProxyError, match="needs data_plane_endpoints"):
        await proxy.start()
    with pytest.raises(Exception, match="must be one of"):
        make_proxy("memory://", data_plane="nginx")


async def test_a_second_hub_on_the_same_log_fails_fast(tmp_path: Path) -> None:
    first = make_proxy(f"file://{tmp_path}/routes.log")
    await first.start()
    try:
        second = make_proxy(f"file://{tmp_path}/routes.log")
        with pytest.raises(EventProxyError, match="already open for writing"):
            await second.start()
    finally:
        await first.stop()


async def test_port_in_use_is_a_clear_error() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    proxy = EventProxy(public_url=f"http://127.0.0.1:{port}/", log_url="memory://")
    try:
        with pytest.raises(EventProxyError, match="could not serve"):
            await proxy.start()
    finally:
        blocker.close()
        await proxy.stop()


async def test_https_with_the_hubs_certificate(tmp_path: Path, backends: dict[str, str]) -> None:
    require_binary("openssl", "apt-get install -y openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    proxy = EventProxy(
        public_url=f"https://127.0.0.1:{port}/",
        log_url="memory://",
        ssl_cert=str(cert),
        ssl_key=str(key),
    )
    await proxy.start()
    try:
        await proxy.add_route("/user/a/", backends["alice"], {})
        context = ssl.create_default_context(cafile=str(cert))
        async with httpx.AsyncClient(verify=context) as client:
            r = await client.get(f"https://127.0.0.1:{port}/user/a/x")
            assert r.status_code == 200 and r.text.startswith("alice")
    finally:
        await proxy.stop()


async def test_a_dead_server_gets_the_hubs_503_page(backends: dict[str, str]) -> None:
    """Like configurable-http-proxy: a refused connection is a 503, rendered by the hub's
    /hub/error/503 page (JupyterHub says "your server appears to be down" there)."""
    proxy = make_proxy("memory://", error_target=backends["hub"] + "/hub/error")
    await proxy.start()
    try:
        await proxy.add_route("/user/dead/", f"http://127.0.0.1:{free_port()}", {})
        async with httpx.AsyncClient(base_url=proxy.public_url) as client:
            r = await client.get("/user/dead/lab")
        assert r.status_code == 503
        assert r.text.startswith("hub GET /hub/error/503?url=")
    finally:
        await proxy.stop()


async def test_delete_racing_an_add_in_flight_is_not_lost(backends: dict[str, str]) -> None:
    proxy = make_proxy("memory://")
    await proxy.start()
    try:
        # The delete is issued while the add is still being appended: it must not be skipped.
        await asyncio.gather(
            proxy.add_route("/user/a/", backends["alice"], {}), proxy.delete_route("/user/a/")
        )
        assert await proxy.get_all_routes() == {}
        add = asyncio.ensure_future(proxy.add_route("/user/b/", backends["bob"], {}))
        await asyncio.sleep(0)  # the add is now queued or being appended
        await proxy.delete_route("/user/b/")
        await add
        assert await proxy.get_all_routes() == {}
    finally:
        await proxy.stop()


async def test_public_url_on_a_unix_socket(tmp_path: Path, backends: dict[str, str]) -> None:
    """JupyterHub's http+unix:// public URLs: the in-process data plane listens on the socket."""
    from urllib.parse import quote

    sock = tmp_path / "proxy.sock"
    proxy = EventProxy(public_url=f"http+unix://{quote(str(sock), safe='')}/", log_url="memory://")
    await proxy.start()
    try:
        await proxy.add_route("/user/a/", backends["alice"], {})
        transport = httpx.AsyncHTTPTransport(uds=str(sock))
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.get("http://localhost/user/a/x")
        assert r.status_code == 200 and r.text.startswith("alice GET /user/a/x")
    finally:
        await proxy.stop()
    assert not sock.exists()
