"""A conformance suite for JupyterHub proxies (any ``jupyterhub.proxy.Proxy`` subclass).

The tests send real HTTP and WebSocket traffic through the proxy's public URL to loopback echo
backends, after driving the proxy through JupyterHub's own API (``add_route``, ``delete_route``,
``get_all_routes``, ``get_route``, ``check_routes``): routing, overlapping prefixes, host
routing, Host/Origin headers, WebSockets, concurrency, JupyterHub's escaping of unusual names,
hostile routespecs, route data, persistence across a restart, ``last_activity``.

Using it in a project
---------------------
1. Install eventproxy in the test environment; its pytest plugin (``eventproxy.testing.plugin``)
   loads through the ``pytest11`` entry point. The suite needs anyio's pytest plugin (installed
   with anyio) and runs on asyncio, like JupyterHub.
2. Provide a fixture ``conformance_proxy_factory`` returning a :class:`ProxyFactory`::

       @pytest.fixture
       def conformance_proxy_factory(tmp_path):
           @contextlib.asynccontextmanager
           async def factory(*, host_routing, hub_url):
               app = stub_app(hub_url, host_routing=host_routing)
               port = ...  # a free port on 127.0.0.1
               proxy = MyProxy(app=app, hub=app.hub, host_routing=host_routing,
                               public_url=f"http://127.0.0.1:{port}", ...)
               await maybe_await(proxy.start())
               try:
                   yield ProxyUnderTest(proxy, f"http://127.0.0.1:{port}",
                                        implementation="my-proxy")
               finally:
                   await maybe_await(proxy.stop())
           return factory

3. In a test module: ``from eventproxy.testing.suite import *``. Parametrise the factory fixture
   to run the suite against several configurations (set ``ProxyUnderTest.variant``).

Declaring what differs
----------------------
A configuration that can never have one of the features some tests need (``foreign_routes``,
``restart``, ``last_activity``, ``host_routing``, ``check_routes``) says so on its factory's
parameter, and those tests are not generated for it (the report lists them as n/a)::

    @pytest.fixture(params=["full", pytest.param("small", marks=pytest.mark.conformance_lacks(
        "foreign_routes", label="my-proxy[small]", reason="serves JupyterHub's routes only"))])

A lack known only at run time still skips: ``ProxyUnderTest.capabilities``
(:class:`Capabilities`: ``last_activity``, ``host_routing``, ``check_routes``), ``restart=None``
(the persistence test), ``add_foreign_route=None`` (the "only own routes" test).

A behaviour that differs from the suite's expectation is *documented, not hidden*:
``known_differences`` (or the ``proxy_difference`` marker inside the suite for implementations
it knows) makes that test a strict xfail, so a fixed implementation is noticed (XPASS fails the
run).

Reports
-------
``pytest --conformance-report=results.json`` writes one record per test and implementation.
"""

from __future__ import annotations

from ._backends import EchoBackend, Seen
from ._client import Reply, WebSocketClient, http_request
from ._contract import (
    Capabilities,
    ProxyFactory,
    ProxyUnderTest,
    close_jupyterhub_http_client,
    maybe_await,
    stub_app,
)

__all__ = [
    "Capabilities",
    "EchoBackend",
    "ProxyFactory",
    "ProxyUnderTest",
    "Reply",
    "Seen",
    "WebSocketClient",
    "close_jupyterhub_http_client",
    "http_request",
    "maybe_await",
    "stub_app",
]
