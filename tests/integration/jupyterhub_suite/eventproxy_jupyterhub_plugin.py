"""pytest plugin: run JupyterHub's shipped proxy tests with ``proxy_class = "eventproxy"``.

Loaded with ``-p eventproxy_jupyterhub_plugin`` into a *separate* pytest process (JupyterHub's
own tests need pytest-asyncio, which the project's suite does not use; see
``test_jupyterhub_proxy_tests.py``). It makes every ``MockHub`` JupyterHub's tests create use
``EventProxy`` (resolved through the ``jupyterhub.proxies`` entry point, as a hub resolves
``c.JupyterHub.proxy_class = "eventproxy"``), and marks the tests that cannot pass with a proxy
other than configurable-http-proxy as not-run xfails, each with the reason.

``EVENTPROXY_JH_SUITE_PROXY=chp`` leaves JupyterHub's default proxy in place (a baseline run);
``EVENTPROXY_JH_SUITE_DATA_PLANE=traefik`` runs them with EventProxy starting traefik;
``EVENTPROXY_JH_SUITE_ETCD=HOST:PORT`` gives every MockHub an etcd route log (its own prefix)
instead of a file log (with traefik: the etcd provider, its own root key).

Every ``EventProxy.add_route`` / ``delete_route`` call is timed into ``proxy-calls.jsonl`` in
``EVENTPROXY_JH_SUITE_LOG_DIR`` (one JSON line each: the test, the call, its seconds), so that a
failed JupyterHub timing assertion can be told apart from a slow proxy (see
``test_jupyterhub_proxy_tests``).

With ``JUPYTERHUB_TEST_SUBDOMAIN_HOST`` (JupyterHub's switch for running its tests with host
routing, e.g. ``http://localhost.jovyan.org:8000``), that host and every name under it resolve to
127.0.0.1 inside this process, as the public DNS wildcard JupyterHub's CI relies on does: the
tests stay on loopback and need no DNS.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

#: The node id of the test running now (for the proxy-call record).
_CURRENT_TEST = [""]
#: Where each proxy call's duration is written (one JSON object per line).
PROXY_CALLS = "proxy-calls.jsonl"

#: JupyterHub test (node name) -> why it cannot pass with a proxy other than CHP.
CANNOT_PASS: dict[str, str] = {
    "test_external_proxy": (
        "starts configurable-http-proxy itself and configures ConfigurableHTTPProxy "
        "(api_url, auth_token, should_start=False, proxy_process): it tests that class, "
        "not the proxy API"
    ),
    "test_proxy_bind_ip": (
        "starts ConfigurableHTTPProxy on 0.0.0.0 and connects to the machine's own non-loopback "
        "address (these tests stay on 127.0.0.1); it tests CHP's command line, not proxy_class"
    ),
}


#: JupyterHub test -> the timing race in JupyterHub's own test that can fail it on a loaded
#: machine, whatever the proxy. ``test_jupyterhub_proxy_tests`` runs such a test again, alone,
#: once, when it is the only kind of failure; it must then pass (the re-run is reported).
KNOWN_RACES: dict[str, str] = {
    "test_start_stop_race": (
        "patches Spawner.start 0.1 s (slow_spawn_timeout) after asking for a spawn, assuming "
        "the hub has called start by then; on a loaded machine it has not, the mock is "
        "called ('not enough values to unpack') and the next POST answers 201, not 202. "
        "JupyterHub's User.spawn calls no proxy method before Spawner.start"
    ),
    "test_named_server_stop_server": (
        "mocks Proxy.add_user to raise, and expects the spawn and the stop that follows it to "
        "finish within slow_spawn_timeout (10 s); on a loaded machine the mock single-user "
        "server alone takes ~9 s to start (measured: 'took 9.157 seconds to start'), the API "
        "answers 201 while the stop is still pending, and the server is not yet None. The "
        "proxy's part (add_user) is the mock"
    ),
    "test_spawn": (
        "expects DELETE /users/wash/server to answer 204 within slow_stop_timeout (10 s): "
        "JupyterHub sends SIGINT to the mock single-user server and polls for its exit with "
        "a growing backoff; in one CI run (2 cores, both modes at once) it answered 202. The "
        "proxy's part is one delete_route, timed in proxy-calls.jsonl (every route call of a "
        "local run of all three modules: at most 0.032 s)"
    ),
}


def _use_eventproxy() -> bool:
    return os.environ.get("EVENTPROXY_JH_SUITE_PROXY", "eventproxy") == "eventproxy"


def _resolve_subdomains_to_loopback(domain: str) -> None:
    original = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str):
            name = name.rstrip(".").lower()
            if name == domain or name.endswith("." + domain):
                host = "127.0.0.1"
        return original(host, *args, **kwargs)

    socket.getaddrinfo = getaddrinfo


def pytest_configure(config: pytest.Config) -> None:
    # Started in the background by a non-interactive shell, this process inherits SIGINT
    # ignored, and so would every single-user server the tests spawn: JupyterHub stops them
    # with SIGINT and waits 10 s before SIGTERM, failing the tests that expect a quick stop
    # (test_named_servers' 204). A Python handler here becomes SIG_DFL in each child.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    subdomain_host = os.environ.get("JUPYTERHUB_TEST_SUBDOMAIN_HOST")
    if subdomain_host:
        from urllib.parse import urlsplit

        domain = urlsplit(subdomain_host).hostname
        if domain:
            _resolve_subdomains_to_loopback(domain.lower())
    if not _use_eventproxy():
        return
    from jupyterhub.tests.mocking import MockHub

    original = MockHub.__init__
    # Each MockHub gets its own route log. EventProxy's default (next to the hub's sqlite file)
    # would be the shared temporary directory for MockHub, leaking routes between runs.
    log_dir = Path(os.environ.get("EVENTPROXY_JH_SUITE_LOG_DIR") or tempfile.mkdtemp())
    counter = itertools.count()

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("proxy_class", "eventproxy")
        original(self, *args, **kwargs)
        # A timing knob only: on a loaded 2-core machine JupyterHub's single-user servers take
        # more than the default 30 s to answer, and JupyterHub gives up on them.
        if "http_timeout" not in self.config.Spawner:
            self.config.Spawner.http_timeout = 120
        if "log_url" not in self.config.EventProxy:
            # the pid too: unique whoever else writes into log_dir
            name = f"routes-{os.getpid()}-{next(counter)}"
            etcd = os.environ.get("EVENTPROXY_JH_SUITE_ETCD")  # host:port of a test etcd
            if etcd:
                # a fresh prefix per MockHub, and its own traefik root key: a new hub's
                # projection must not meet the marker of an earlier hub's (which is ahead)
                self.config.EventProxy.log_url = f"etcd://{etcd}/{name}"
                self.config.EventProxy.traefik_root_key = f"traefik-{name}"
            else:
                self.config.EventProxy.log_url = f"file://{log_dir / name}.log"
        plane = os.environ.get("EVENTPROXY_JH_SUITE_DATA_PLANE")
        if plane and "data_plane" not in self.config.EventProxy:
            self.config.EventProxy.data_plane = plane

    MockHub.__init__ = __init__
    _time_proxy_calls(log_dir / PROXY_CALLS)


def _time_proxy_calls(record: Path) -> None:
    """Wrap EventProxy's route calls to write each one's duration to ``record``."""
    from eventproxy import EventProxy

    def timed(name: str) -> None:
        call = getattr(EventProxy, name)

        @functools.wraps(call)
        async def wrapper(self: Any, routespec: str, *args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await call(self, routespec, *args, **kwargs)
            finally:
                line = {
                    "test": _CURRENT_TEST[0],
                    "call": name,
                    "routespec": routespec,
                    "seconds": round(time.monotonic() - started, 4),
                }
                with open(record, "a", encoding="utf-8") as out:
                    out.write(json.dumps(line) + "\n")

        setattr(EventProxy, name, wrapper)

    for name in ("add_route", "delete_route"):
        timed(name)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _CURRENT_TEST[0] = item.nodeid


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not _use_eventproxy():
        return
    for item in items:
        reason = CANNOT_PASS.get(getattr(item, "originalname", item.name))
        if reason is None:
            reason = CANNOT_PASS.get(item.name)
        if reason is not None:
            # Not run: its half-torn-down hub would keep the module's route log locked and
            # break the tests after it.
            item.add_marker(pytest.mark.xfail(run=False, reason=reason))
