"""The JupyterHub proxy conformance suite against ``EventProxy`` with each local log backend.

``EventProxy`` runs as a hub runs it: its in-process data plane serves ``public_url`` (a free
loopback port) and the route log is ``memory://NAME`` or ``file:///...``. A restart stops the
instance and starts a new one on the same log. Documented differences are marked in
:mod:`eventproxy.testing.suite`.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from eventproxy.log import forget_memory_logs
from eventproxy.testing import Capabilities, ProxyFactory, ProxyUnderTest, stub_app
from eventproxy.testing.suite import *  # noqa: F403
from support import LOOPBACK, free_port

_names = itertools.count()


@pytest.fixture
def _conformance_forget_memory_logs() -> Iterator[None]:
    yield
    forget_memory_logs()


def _in_process(log: str) -> object:
    """A log backend, with what the in-process plane can never have: routes of its own that
    are not JupyterHub's (it serves the route log's table and nothing else)."""
    return pytest.param(
        log,
        marks=pytest.mark.conformance_lacks(
            "foreign_routes",
            label=f"eventproxy[{log}]",
            reason="the in-process data plane serves the route log's table only: no route can "
            "be added but through JupyterHub's API",
        ),
    )


@pytest.fixture(params=[_in_process("memory"), _in_process("file")])
def conformance_proxy_factory(
    request: pytest.FixtureRequest, tmp_path: Path, _conformance_forget_memory_logs: None
) -> ProxyFactory:
    """EventProxy with the in-process data plane, on a memory or a file route log."""
    from eventproxy.proxy import EventProxy

    backend = str(request.param)

    @contextlib.asynccontextmanager
    async def factory(*, host_routing: bool, hub_url: str) -> AsyncIterator[ProxyUnderTest]:
        n = next(_names)
        log_url = (
            f"memory://conformance-{n}"
            if backend == "memory"
            else f"file://{tmp_path / f'routes-{n}.log'}"
        )
        app = stub_app(hub_url, host_routing=host_routing)
        public_url = f"http://{LOOPBACK}:{free_port()}"

        async def start() -> EventProxy:
            proxy = EventProxy(
                app=app,
                hub=app.hub,
                host_routing=host_routing,
                public_url=public_url,
                log_url=log_url,
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
                variant=backend,
                capabilities=Capabilities(last_activity=True, host_routing=True, check_routes=True),
                restart=restart,
                persistent=True,
            )
        finally:
            await current.stop()

    return factory
