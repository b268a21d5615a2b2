"""The JupyterHub proxy conformance suite against JupyterHub's own ``ConfigurableHTTPProxy``.

JupyterHub's ``ConfigurableHTTPProxy`` class starts a real configurable-http-proxy (npm, installed
into ``.cache/node`` by ``tests/support/tools.py``) on free loopback ports, exactly as a hub
does. Its documented differences are marked in :mod:`eventproxy.testing.suite`.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from eventproxy.testing import Capabilities, ProxyFactory, ProxyUnderTest, stub_app
from eventproxy.testing.suite import *  # noqa: F403
from support import LOOPBACK, free_port
from support.chp import require_chp

pytestmark = pytest.mark.services

_instances = itertools.count()


@pytest.fixture
def conformance_proxy_factory(tmp_path: Path) -> ProxyFactory:
    """JupyterHub's ConfigurableHTTPProxy, started by its own ``start()``."""
    from jupyterhub.proxy import ConfigurableHTTPProxy

    binary = require_chp(install=True)

    @contextlib.asynccontextmanager
    async def factory(*, host_routing: bool, hub_url: str) -> AsyncIterator[ProxyUnderTest]:
        app = stub_app(hub_url, host_routing=host_routing)
        public_url = f"http://{LOOPBACK}:{free_port()}"
        settings = {
            "app": app,
            "hub": app.hub,
            "host_routing": host_routing,
            "public_url": public_url,
            "api_url": f"http://{LOOPBACK}:{free_port()}",
            "auth_token": secrets.token_hex(16),
            "command": [str(binary)],
            "log_level": "warn",
        }

        async def start() -> ConfigurableHTTPProxy:
            proxy = ConfigurableHTTPProxy(
                pid_file=str(tmp_path / f"chp-{next(_instances)}.pid"), **settings
            )
            await proxy.start()
            return proxy

        def stop(proxy: ConfigurableHTTPProxy) -> None:
            proxy.stop()
            proxy.proxy_process.wait(10)  # stop() only signals; reap it (no zombie, no warning)

        current = await start()

        async def restart() -> ConfigurableHTTPProxy:
            nonlocal current
            stop(current)
            current = await start()
            return current

        async def add_foreign_route(routespec: str, target: str) -> None:
            # Straight through CHP's REST API, without JupyterHub's "jupyterhub" marker.
            await current.api_request(routespec.rstrip("/"), method="POST", body={"target": target})

        try:
            yield ProxyUnderTest(
                proxy=current,
                public_url=public_url,
                implementation="configurable-http-proxy",
                capabilities=Capabilities(last_activity=True, host_routing=True, check_routes=True),
                restart=restart,
                persistent=False,
                add_foreign_route=add_foreign_route,
            )
        finally:
            stop(current)

    return factory
