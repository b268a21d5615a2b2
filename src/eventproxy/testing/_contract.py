"""The fixture contract between the conformance suite and a proxy project.

A project provides one pytest fixture, ``conformance_proxy_factory``, returning a
:class:`ProxyFactory`: called with ``host_routing`` and the URL of the suite's stand-in hub, it
gives an async context manager that starts the project's ``jupyterhub.proxy.Proxy`` subclass
and yields a :class:`ProxyUnderTest` (and stops everything on exit). See the package docstring.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Protocol

__all__ = [
    "Capabilities",
    "ProxyFactory",
    "ProxyUnderTest",
    "close_jupyterhub_http_client",
    "maybe_await",
    "stub_app",
]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an implementation declares it can do; a test of a missing capability is skipped.

    ``last_activity``: route data gets ``last_activity`` (ISO 8601, UTC) after traffic.
    ``host_routing``: the implementation can be started with ``host_routing = True``.
    ``check_routes``: ``Proxy.check_routes`` can be driven with JupyterHub-shaped stand-in
    users, spawners and services (the base class implementation, or one reading the same
    attributes).
    """

    last_activity: bool = True
    host_routing: bool = True
    check_routes: bool = True


class _Proxy(Protocol):
    """The part of ``jupyterhub.proxy.Proxy`` the suite calls (JupyterHub is untyped)."""

    host_routing: bool

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None: ...
    async def delete_route(self, routespec: str) -> None: ...
    async def get_all_routes(self) -> dict[str, dict[str, Any]]: ...
    async def get_route(self, routespec: str) -> dict[str, Any] | None: ...


@dataclass(eq=False)
class ProxyUnderTest:
    """A started proxy, as the suite sees it.

    ``proxy``       the started ``Proxy`` instance (JupyterHub's API: ``add_route``, ...).
    ``public_url``  ``http://127.0.0.1:PORT``: where the suite sends real HTTP and WebSockets.
    ``implementation``  a stable name, e.g. ``"configurable-http-proxy"``; matched by the
                    ``proxy_difference`` marker; ``variant`` (e.g. ``"file"``) refines it, and
                    ``label`` is ``implementation[variant]``.
    ``restart``     ``None`` if the implementation cannot be restarted in a test; otherwise a
                    coroutine function that stops the proxy and starts a new instance on the
                    same storage and the same public URL, returning the new instance
                    (``persistent`` says whether routes are expected to survive that).
    ``add_foreign_route``  ``None``, or a coroutine function adding a route *not* owned by
                    JupyterHub (e.g. straight through CHP's REST API), which ``get_all_routes``
                    must not return.
    ``known_differences``  test name (``test_x`` or ``test_x[case]``) -> reason, for differences
                    a project documents on its own side; they become strict xfails.
    """

    proxy: Any
    public_url: str
    implementation: str
    variant: str = ""
    capabilities: Capabilities = field(default_factory=Capabilities)
    restart: Callable[[], Awaitable[Any]] | None = None
    persistent: bool = False
    add_foreign_route: Callable[[str, str], Awaitable[None]] | None = None
    known_differences: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.implementation}[{self.variant}]" if self.variant else self.implementation

    async def restart_proxy(self) -> None:
        """Run ``restart`` and adopt the new ``Proxy`` instance it returns."""
        if self.restart is None:
            raise RuntimeError(f"{self.label} declares no restart")
        self.proxy = await self.restart()


class ProxyFactory(Protocol):
    """``factory(host_routing=..., hub_url=...)`` -> async context manager of a started proxy.

    ``hub_url`` is the URL of the suite's stand-in hub (an echo backend), e.g.
    ``http://127.0.0.1:PORT/hub/``: give it to the proxy as its hub (see :func:`stub_app`), so
    that error pages and the hub route of ``check_routes`` reach it.
    """

    def __call__(
        self, *, host_routing: bool, hub_url: str
    ) -> AbstractAsyncContextManager[ProxyUnderTest]: ...


def stub_app(hub_url: str, *, host_routing: bool = False, domain: str = "example.test") -> Any:
    """The minimum of a ``JupyterHub`` app and ``Hub`` object that ``Proxy`` classes read.

    Returns an object with ``.hub`` (``url``, ``host``, ``routespec``, ``base_url``),
    ``subdomain_host``, ``internal_ssl``, ``users``, ``_service_map`` and ``db_url``. Pass it as
    ``Proxy(app=app, hub=app.hub, ...)``.
    """
    scheme, _, rest = hub_url.partition("://")
    netloc, _, _path = rest.partition("/")
    hub = SimpleNamespace(
        url=hub_url,
        host=f"{scheme}://{netloc}",
        routespec=f"{domain}/" if host_routing else "/",
        base_url="/hub/",
    )
    return SimpleNamespace(
        hub=hub,
        subdomain_host=f"http://{domain}" if host_routing else "",
        internal_ssl=False,
        users={},
        _service_map={},
        db_url="sqlite:///:memory:",
        base_url="/",
    )


async def maybe_await(value: Any) -> Any:
    """``await value`` if it is awaitable (``Proxy.start``/``stop`` may be sync or async)."""
    if inspect.isawaitable(value):
        return await value
    return value


async def close_jupyterhub_http_client() -> None:
    """Close JupyterHub's shared aiohttp session for this event loop (no unclosed-session leak).

    JupyterHub >= 6 makes its proxy API calls through a per-loop ``JupyterHubHTTPClient``; a
    test that ends with it open leaks a socket and an "Unclosed client session" warning.
    """
    try:
        from jupyterhub.httpclient import JupyterHubHTTPClient
    except ImportError:  # JupyterHub < 6 uses tornado's client; nothing to close
        return
    if JupyterHubHTTPClient.initialized() or JupyterHubHTTPClient._loop_instances:
        await JupyterHubHTTPClient.loop_instance().close()
