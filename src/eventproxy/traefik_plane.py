"""``data_plane = "traefik"``: the projection, the traefik replicas, visibility and activity.

EventProxy folds the log as always; this module keeps traefik's view of it: a projector (the
file projector for the file provider, the KV projector for traefik's etcd provider), the
replicas' APIs to confirm each change on (:mod:`.visibility`), traefik's metrics for
``last_activity`` (:mod:`.traefik_activity`), and -- with ``should_start`` -- the traefik
process itself (:mod:`.supervise`).

* ``open()`` sets up the projector and the APIs and re-projects the current table;
* ``start()`` (``should_start`` only) writes traefik's configuration into a private directory
  and starts traefik, waiting until its API answers;
* ``project(records, table)`` applies the records just appended (or re-projects the table
  when the projection is not exactly one batch behind, e.g. after a failed write);
* ``confirm(seq, timeout)`` returns once the replicas route ``seq``;
* ``changed()`` (the hub's log follower calls it) projects a change written by someone else
  -- another hub, a repair -- at once, not on this hub's next write;
* a background task scrapes each replica's metrics every ``activity_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio.to_thread
import tomli_w
from traitlets import Bool, Float, Integer, List, Unicode
from traitlets.config import LoggingConfigurable

from eventproxy_dataplane.etcd import EtcdClient, EtcdOptions

from ._errors import CompactedError, EventProxyError
from .events import Record
from .log import RouteLog
from .log.etcd import parse_etcd_url
from .projectors import (
    GatewayKV,
    Limits,
    Projector,
    TraefikFileProjector,
    TraefikKVProjector,
)
from .projectors.file import atomic_write
from .supervise import (
    TraefikError,
    TraefikLayout,
    TraefikProcess,
    api_dynamic_config,
    find_traefik,
    random_token,
    static_config,
)
from .table import RouteTable
from .traefik_activity import ActivityTracker, router_request_totals
from .traefik_api import TraefikAPI, TraefikAPIError
from .traefik_cert import write_self_signed
from .visibility import TraefikVisibility

__all__ = ["TraefikConfig", "TraefikPlane", "TraefikSettings"]

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]


@dataclass
class TraefikSettings:
    public_url: str
    log_url: str
    should_start: bool
    api_urls: list[str] = field(default_factory=list)
    api_username: str = ""
    api_password: str = ""
    require_all: bool = True
    provider: str = ""  # "file" | "etcd"; "" = from the log URL
    dynamic_file: str = ""  # the file projection (should_start=False, file provider)
    etcd_url: str = ""  # the etcd the KV projection goes to ("" = the log's etcd)
    root_key: str = "traefik"
    max_txn_ops: int = 128
    traefik_bin: str = ""
    ssl_cert: str = ""
    ssl_key: str = ""
    activity_interval: float = 10.0
    start_timeout: float = 30.0
    etcd_options: EtcdOptions | None = None  # credentials and TLS for the KV projection


def _absolute(path: str | None) -> str:
    """traefik runs in its own directory: hand it absolute paths."""
    return str(Path(path).resolve()) if path else ""


def _free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _etcd_endpoints(settings: TraefikSettings) -> tuple[str, bool]:
    """(endpoints, tls) of the etcd the KV projection goes to."""
    if settings.etcd_url:
        return settings.etcd_url, settings.etcd_url.startswith("https")
    if settings.log_url.split(":", 1)[0].lower() in ("etcd", "etcds"):
        netloc, tls, _ = parse_etcd_url(settings.log_url)
        return netloc, tls
    raise EventProxyError(
        "EventProxy.traefik_provider = 'etcd' needs EventProxy.traefik_etcd_url "
        "(or an etcd:// log URL)"
    )


def _check_root_key(settings: TraefikSettings) -> None:
    """traefik reads every key under its root key: it must not hold the log's keys."""
    if settings.etcd_url or settings.log_url.split(":", 1)[0].lower() not in ("etcd", "etcds"):
        return  # another etcd, or no etcd log
    _, _, prefix = parse_etcd_url(settings.log_url)
    root = settings.root_key.strip("/")
    if root == prefix or prefix.startswith(root + "/") or root.startswith(prefix + "/"):
        raise EventProxyError(
            f"EventProxy.traefik_root_key {root!r} overlaps the log's key prefix {prefix!r} "
            "in the same etcd: traefik would read the log's keys; choose another root key"
        )


class TraefikPlane:
    def __init__(self, settings: TraefikSettings, log: Log) -> None:
        self.settings = settings
        self._log = log
        scheme = settings.log_url.split(":", 1)[0].lower()
        self.provider = settings.provider or ("etcd" if scheme in ("etcd", "etcds") else "file")
        if self.provider not in ("file", "etcd"):
            raise EventProxyError(
                f"EventProxy.traefik_provider must be 'file' or 'etcd', not {self.provider!r}"
            )
        self.layout: TraefikLayout | None = None
        self.etcd: EtcdClient | None = None
        self._api_port = 0
        if settings.should_start:
            self.layout = TraefikLayout(Path(tempfile.mkdtemp(prefix="eventproxy-traefik-")))
            self._api_port = _free_loopback_port()
            self.api_username = "eventproxy"
            self.api_password = random_token()
            self.api_urls = [f"http://127.0.0.1:{self._api_port}"]
        else:
            if not settings.api_urls:
                raise EventProxyError(
                    "EventProxy.data_plane = 'traefik' with should_start = False needs "
                    "EventProxy.traefik_api_urls (the API URL of every traefik replica)"
                )
            self.api_username = settings.api_username
            self.api_password = settings.api_password
            self.api_urls = list(settings.api_urls)
        self.projector: Projector = self._make_projector()
        self.apis = [
            TraefikAPI(u, username=self.api_username, password=self.api_password)
            for u in self.api_urls
        ]
        nudge = self.projector.nudge if isinstance(self.projector, TraefikFileProjector) else None
        self.visibility = TraefikVisibility(
            self.apis, self.provider, require_all=settings.require_all, nudge=nudge, log=log
        )
        self.activity = ActivityTracker()
        self.process: TraefikProcess | None = None
        self._scraper: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._projecting = asyncio.Lock()
        self._died: int | None = None

    def _make_projector(self) -> Projector:
        s = self.settings
        if self.provider == "etcd":
            _check_root_key(s)
            endpoints, tls = _etcd_endpoints(s)
            self.etcd = EtcdClient(endpoints, s.etcd_options, tls=tls)
            return TraefikKVProjector(
                GatewayKV(client=self.etcd),
                s.root_key,
                limits=Limits(max_ops=s.max_txn_ops),
                log=self._log,
            )
        if self.layout is not None:
            path = self.layout.routes_path
        elif s.dynamic_file:
            path = Path(s.dynamic_file)
        else:
            raise EventProxyError(
                "EventProxy.data_plane = 'traefik' with the file provider and should_start = "
                "False needs EventProxy.traefik_dynamic_file (the file the replicas watch)"
            )
        return TraefikFileProjector(path)

    # -- lifecycle ---------------------------------------------------------------------------
    async def open(self, table: RouteTable) -> None:
        """Re-project ``table`` (a restart resumes: only differences are written)."""
        if self.layout is not None:
            self.layout.dynamic_dir.mkdir(parents=True, exist_ok=True)
        await self.projector.reset(table)

    async def start(self) -> None:
        """Write traefik's configuration and start it (``should_start`` only)."""
        s = self.settings
        assert self.layout is not None
        executable = find_traefik(s.traefik_bin)
        self.layout.dynamic_dir.mkdir(parents=True, exist_ok=True)
        cert, key = s.ssl_cert, s.ssl_key
        if not (cert and key):  # traefik would generate an RSA key on every reload
            cert, key = str(self.layout.default_cert_path), str(self.layout.default_key_path)
            await anyio.to_thread.run_sync(
                lambda: write_self_signed(
                    Path(cert), Path(key), common_name="eventproxy traefik default"
                )
            )
        api_doc = api_dynamic_config(
            self.api_username, self.api_password, ssl_cert=cert, ssl_key=key
        )
        await anyio.to_thread.run_sync(
            atomic_write, self.layout.api_path, tomli_w.dumps(api_doc).encode()
        )
        etcd = None
        credentials: dict[str, Any] = {}
        if self.etcd is not None:
            etcd = [urlsplit(e).netloc for e in self.etcd.endpoints]
            o = self.etcd.options
            credentials = {
                "etcd_username": o.username or "",
                "etcd_password": o.password or "",
                "etcd_tls": any(e.startswith("https:") for e in self.etcd.endpoints),
                "etcd_ca_file": _absolute(o.ca_file),
                "etcd_cert_file": _absolute(o.cert_file),
                "etcd_key_file": _absolute(o.key_file),
            }
        static = static_config(
            public_url=s.public_url,
            api_port=self._api_port,
            layout=self.layout,
            etcd_endpoints=etcd,
            etcd_root=s.root_key,
            **credentials,
        )
        # it may hold the etcd password: owner-only (in a 0700 directory), never in argv
        data, static_path = tomli_w.dumps(static).encode(), self.layout.static_path
        await anyio.to_thread.run_sync(lambda: atomic_write(static_path, data, mode=0o600))
        self.process = TraefikProcess(
            executable, self.layout.static_path, self._log, on_exit=self._exited
        )
        await self.process.start()
        deadline = time.monotonic() + s.start_timeout
        while not await self.apis[0].ping():
            if self._died is not None:
                raise TraefikError(
                    f"traefik exited with code {self._died} while starting (see the log above)"
                )
            if time.monotonic() > deadline:
                await self.process.stop()
                raise TraefikError(f"traefik's API did not answer within {s.start_timeout}s")
            await asyncio.sleep(0.02)
        self._log.info(
            "eventproxy: traefik serves %s; its API is on %s", s.public_url, self.api_urls[0]
        )

    def _exited(self, code: int) -> None:
        self._died = code

    def start_scraping(self) -> None:
        if self._scraper is None and self.settings.activity_interval > 0:
            self._scraper = asyncio.get_running_loop().create_task(
                self._scrape_forever(), name="eventproxy-traefik-metrics"
            )

    async def _scrape_forever(self) -> None:
        first = True
        while True:
            await self.scrape(baseline=first and not self.settings.should_start)
            first = False
            await asyncio.sleep(self.settings.activity_interval)

    async def scrape(self, *, baseline: bool = False) -> None:
        """Read every replica's router counters once (errors are logged, never raised)."""
        for api in self.apis:
            try:
                text = await api.metrics()
            except TraefikAPIError as exc:
                self._log.debug("eventproxy: no metrics from %s: %s", api.url, exc)
                continue
            self.activity.observe(
                api.url, router_request_totals(text), datetime.now(UTC), baseline=baseline
            )

    async def stop(self) -> None:
        for task in (self._scraper, self._follower):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._scraper = self._follower = None
        if self.process is not None:
            await self.process.stop()
            self.process = None
        for api in self.apis:
            await api.aclose()
        if self.etcd is not None:
            await self.etcd.aclose()
        if self.layout is not None:
            directory = self.layout.directory
            await anyio.to_thread.run_sync(lambda: shutil.rmtree(directory, ignore_errors=True))

    # -- changes -----------------------------------------------------------------------------
    async def project(self, records: Sequence[Record], table: RouteTable) -> None:
        """Bring the projection to ``table``: apply ``records`` when they are exactly what it
        lacks, else re-project the whole table."""
        p = self.projector
        records = [r for r in records if p.seq < r.seq <= table.seq]
        if records and records[0].seq == p.seq + 1 and records[-1].seq == table.seq:
            await p.apply(records)
        elif p.seq != table.seq:
            await p.reset(table)

    async def catch_up(self, log: RouteLog, table: RouteTable) -> None:
        """Project what the projection lacks of ``table``, reading the records from ``log``
        (another task -- the log follower -- may have folded them into the table already).
        One projection write at a time: the hub's writes and the follower share the projector."""
        async with self._projecting:
            if self.projector.seq == table.seq:
                return
            try:
                records = await log.read(self.projector.seq + 1)
            except CompactedError:
                records = []
            await self.project(records, table)

    # -- following the log: changes written by anyone else ------------------------------------
    def changed(self) -> None:
        """The table moved on without this hub writing (another hub, a repair): project it."""
        self._changed.set()

    def start_following(self, log: RouteLog, table: Callable[[], RouteTable]) -> None:
        """Project every change of ``table()`` (signalled by :meth:`changed`) promptly, in as
        few writes as the changes arrive in (a burst is coalesced: each write projects the whole
        table as it is then)."""
        if self._follower is None:
            self._follower = asyncio.get_running_loop().create_task(
                self._follow(log, table), name="eventproxy-traefik-follow"
            )

    async def _follow(self, log: RouteLog, table: Callable[[], RouteTable]) -> None:
        while True:
            await self._changed.wait()
            self._changed.clear()
            current = table()
            try:
                await self.catch_up(log, current)
            except EventProxyError as exc:  # the store or the log: retried, never lost
                self._log.error(
                    "eventproxy: cannot project seq %d into traefik: %s; retrying in 1s",
                    current.seq,
                    exc,
                )
                await asyncio.sleep(1.0)
                self._changed.set()

    async def confirm(self, seq: int, within: float) -> list[str]:
        if self._died is not None and self.settings.should_start:
            raise TraefikError(f"traefik exited with code {self._died}; routes are not served")
        return await self.visibility.wait(seq, within)

    def last_activity(self) -> dict[str, datetime]:
        return self.activity.last_activity


# -- EventProxy's traefik settings (a mixin, so proxy.py only wires it in) ------------------------


class TraefikConfig(LoggingConfigurable):
    """The ``EventProxy.traefik_*`` settings (``data_plane = "traefik"``)."""

    traefik_api_urls = List(
        Unicode(),
        config=True,
        help="""API URLs of the traefik replicas (should_start = False), e.g.
        ["http://traefik-0.traefik:8099"]. Every change must be routed by these before
        add_route/delete_route return (see require_all_endpoints).""",
    )
    traefik_api_username = Unicode("", config=True, help="Basic-auth user of traefik's API.")
    traefik_api_password = Unicode("", config=True, help="Basic-auth password of traefik's API.")
    traefik_provider = Unicode(
        "",
        config=True,
        help="""How traefik reads the routes: "file" (a file-provider TOML file written
        atomically) or "etcd" (traefik's KV layout). Default: "etcd" for an etcd:// log,
        else "file".""",
    )
    traefik_dynamic_file = Unicode(
        "",
        config=True,
        help="""The file-provider file to project into when traefik runs elsewhere
        (should_start = False, file provider). It must end in .toml.""",
    )
    traefik_etcd_url = Unicode(
        "",
        config=True,
        help="""etcd client URL for the KV projection (default: the etcd of an etcd:// log).""",
    )
    traefik_root_key = Unicode("traefik", config=True, help="traefik's KV rootKey.")
    traefik_max_txn_ops = Integer(
        128,
        config=True,
        help="""Operations per etcd transaction (etcd's --max-txn-ops, default 128). Raise both
        to project a burst in fewer transactions (traefik rebuilds its config per watch event).""",
    )
    traefik_bin = Unicode(
        "", config=True, help="The traefik executable (default: the traefik-bin package's)."
    )
    traefik_activity_interval = Float(
        10.0,
        config=True,
        help="Seconds between scrapes of the replicas' metrics for last_activity (0: never).",
    )
    traefik_start_timeout = Float(
        30.0, config=True, help="Seconds to wait for a started traefik's API to answer."
    )
    require_all_endpoints = Bool(
        True,
        config=True,
        help="""A change must be routed by every listed data-plane replica before add_route /
        delete_route return; a replica that does not answer fails the call, naming it. False:
        unreachable replicas are named in a warning and left out.""",
    )

    def traefik_settings(
        self,
        *,
        public_url: str,
        log_url: str,
        should_start: bool,
        ssl_cert: str,
        ssl_key: str,
        etcd_options: EtcdOptions | None = None,
    ) -> TraefikSettings:
        return TraefikSettings(
            public_url=public_url,
            log_url=log_url,
            should_start=should_start,
            api_urls=list(self.traefik_api_urls),
            api_username=self.traefik_api_username,
            api_password=self.traefik_api_password,
            require_all=bool(self.require_all_endpoints),
            provider=self.traefik_provider,
            dynamic_file=self.traefik_dynamic_file,
            etcd_url=self.traefik_etcd_url,
            root_key=self.traefik_root_key,
            max_txn_ops=int(self.traefik_max_txn_ops),
            traefik_bin=self.traefik_bin,
            ssl_cert=ssl_cert or "",
            ssl_key=ssl_key or "",
            activity_interval=float(self.traefik_activity_interval),
            start_timeout=float(self.traefik_start_timeout),
            etcd_options=etcd_options,
        )
