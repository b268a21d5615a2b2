"""``EventProxy``: JupyterHub's proxy API on top of the route log and a data plane.

``c.JupyterHub.proxy_class = "eventproxy"`` with nothing else gives: routes appended to a file
log next to the hub's database, served by the pure-Python data plane inside the hub process on
the hub's public URL. No nodejs, no traefik, no etcd; routes survive a hub restart.

Theory of operation
-------------------
* Every ``add_route`` / ``delete_route`` becomes an event. Calls that arrive while an append is
  in flight are *group-committed*: the next append carries all of them as one atomic batch
  (one fsync), so a burst of 1,000 adds costs a handful of fsyncs, not 1,000.
* After an append, the proxy *catches up*: it folds the new records into its table (its own
  batch as the log returned it, or, when another writer's records came first, read from the
  log) and applies the difference to the in-process data plane, synchronously (a routing
  table change is one step; requests in flight keep their backend). Only then do the callers'
  awaits return: a route is visible when ``add_route`` returns.
* The proxy also *follows* its log (``watch``): a batch appended by another writer (a second
  hub during a rolling update, a repair, ``eventproxy compact``) is folded in and applied to the
  data plane as it arrives, so ``get_all_routes`` shows what the log holds, whoever wrote it.
  A log that was wiped or restored from an older backup is reported (ERROR) and then followed
  as it is now; JupyterHub's ``check_routes`` adds back the routes of running servers.
* ``get_all_routes`` reads the folded table in memory (never the store), adding
  ``last_activity`` from the data plane's activity records.
* Each caller learns what happened to *its* change: the append's error if the batch was not
  written (the log is unchanged); :class:`DurableNotVisibleError` if it was written but reading
  it back, applying it, or the data plane refused *that* route (the log keeps it: it applies on
  the next catch-up, and adding it again retries the plane). A route no log can store is refused
  in ``add_route`` itself, so it never fails the other callers of its batch.
* ``stop()`` refuses new changes, lets the queued ones finish, and fails explicitly those that
  cannot finish within ``visibility_timeout`` (not written: :class:`EventProxyError`; written or
  not, unknown: :class:`VisibilityTimeoutError`); only then is the log closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
from jupyterhub.proxy import Proxy
from jupyterhub.utils import url_path_join
from traitlets import Bool, Float, List, Unicode, default, validate

from eventproxy_dataplane import DataPlane, DataPlaneError, ProxySettings, RoutingTable
from eventproxy_dataplane.etcd import EtcdOptions

from ._errors import (
    CompactedError,
    DurableNotVisibleError,
    EventProxyError,
    InvalidRouteDataError,
    LogClosedError,
    LogError,
    LogResetError,
    VisibilityTimeoutError,
)
from ._gc import paused_gc
from .events import Event, Record, RouteAdded, RouteRemoved, encode_record, now_utc
from .external import ExternalPlane
from .log import RouteLog, open_log, redact_url
from .log._base import encode_or_refuse
from .log.etcd import etcd_options_from_env
from .projection import PlaneProjection, plane_entry
from .routespec import RouteSpec, parse_routespec
from .table import RouteEntry, RouteTable
from .traefik import name_for, routespec_from_name
from .traefik_plane import TraefikConfig, TraefikPlane

__all__ = ["EventProxy"]

DATA_PLANES = ("inprocess", "traefik", "external")


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _always(error: BaseException) -> Callable[[Event], BaseException]:
    return lambda _event: error


class _Pending:
    """Events waiting for the next group commit, with the futures of their callers."""

    __slots__ = ("events", "since", "waiters")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.waiters: list[asyncio.Future[None]] = []
        self.since = 0.0  # loop time of the first event: the callers' deadlines start here

    def fail(self, error: Callable[[Event], BaseException]) -> None:
        """Fail every caller still waiting, with ``error(its event)``."""
        for event, waiter in zip(self.events, self.waiters, strict=True):
            if not waiter.done():
                waiter.set_exception(error(event))


class EventProxy(Proxy, TraefikConfig):  # type: ignore[misc]  # JupyterHub is untyped
    """A JupyterHub proxy whose routing table is an event log (memory, file or etcd)."""

    log_url = Unicode(
        "",
        config=True,
        help="""Where the route log lives: memory://NAME (tests), file:///path/routes.log, or
        etcd://host:2379/prefix. Default: file eventproxy-routes.log next to the hub's
        sqlite database (the hub's working directory with JupyterHub's defaults).""",
    )
    data_plane = Unicode(
        "inprocess",
        config=True,
        help="""Which data plane serves user traffic: "inprocess" (the pure-Python data plane
        inside the hub process, on the hub's public URL), "traefik" or "external".""",
    )
    visibility_timeout = Float(
        10.0,
        config=True,
        help="Seconds add_route/delete_route wait for a change to be durable and visible.",
    )
    actor = Unicode(config=True, help="Who the log records as the writer of route events.")
    error_target = Unicode(
        config=True,
        help="""URL whose /<status> pages are served for 404/502/503/504 (like
        configurable-http-proxy's --error-target). Default: the hub's /hub/error.""",
    )
    backend_connect_timeout = Float(
        10.0, config=True, help="Seconds to connect to a single-user server."
    )
    data_plane_parser = Unicode(
        "auto",
        config=True,
        help="""HTTP/1.1 parser of the in-process data plane: "h11" (the reference),
        "httptools" (llhttp, the fast extra) or "auto" (httptools when it is installed).""",
    )

    data_plane_endpoints = List(
        Unicode(),
        config=True,
        help="""The admin URLs (http://HOST:PORT) of the eventproxy dataplane nodes serving
        the routes; add_route returns once they have it. Required with data_plane = "external";
        with "traefik" (or "inprocess"), nodes following the same log beside that plane, each
        change confirmed on them as well.""",
    )
    require_all_endpoints = Bool(
        True,
        config=True,
        help="""A change must be confirmed on every data-plane replica (traefik replicas and
        data_plane_endpoints nodes) before add_route/delete_route return, else the call fails
        naming the missing ones. False: a majority of the nodes (external) suffices, traefik
        replicas that do not answer are left out, and with traefik and nodes together a group
        that fails is left out when the other confirmed; a warning names what was left out.""",
    )
    etcd_username = Unicode(
        config=True, help="etcd user for an etcd:// log (default: $EVENTPROXY_ETCD_USERNAME)."
    )
    etcd_password = Unicode(
        config=True,
        help="""etcd password for an etcd:// log (default: $EVENTPROXY_ETCD_PASSWORD). Never put
        it in log_url; it is never logged.""",
    )
    etcd_ca_file = Unicode(
        config=True, help="CA bundle to verify etcd's members (default: $EVENTPROXY_ETCD_CA_FILE)."
    )
    etcd_cert_file = Unicode(
        config=True, help="TLS client certificate for etcd (default: $EVENTPROXY_ETCD_CERT_FILE)."
    )
    etcd_key_file = Unicode(
        config=True, help="TLS client key for etcd (default: $EVENTPROXY_ETCD_KEY_FILE)."
    )

    def _etcd_options(self) -> EtcdOptions:
        env = etcd_options_from_env()
        return EtcdOptions(
            username=self.etcd_username or env.username,
            password=self.etcd_password or env.password,
            ca_file=self.etcd_ca_file or env.ca_file,
            cert_file=self.etcd_cert_file or env.cert_file,
            key_file=self.etcd_key_file or env.key_file,
            timeout=min(self.visibility_timeout, 5.0),
        )

    @default("actor")
    def _default_actor(self) -> str:
        return f"jupyterhub@{socket.gethostname()}:{os.getpid()}"

    @default("log_url")
    def _default_log_url(self) -> str:
        directory = os.getcwd()
        db_url = str(getattr(self.app, "db_url", "") or "")
        if db_url.startswith("sqlite:///") and ":memory:" not in db_url:
            directory = os.path.dirname(os.path.abspath(db_url[len("sqlite:///") :])) or directory
        return "file://" + os.path.join(directory, "eventproxy-routes.log")

    @default("error_target")
    def _default_error_target(self) -> str:
        hub_url = getattr(self.hub, "url", None)
        return url_path_join(hub_url, "error") if hub_url else ""

    @validate("data_plane")
    def _check_data_plane(self, proposal: dict[str, Any]) -> str:
        value = str(proposal["value"])
        if value not in DATA_PLANES:
            raise ValueError(f"EventProxy.data_plane must be one of {DATA_PLANES}, not {value!r}")
        return value

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._log: RouteLog | None = None
        self._projection = PlaneProjection(None, log=self.log)
        self._plane: DataPlane | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._open_lock: asyncio.Lock | None = None
        self._pending = _Pending()
        self._inflight: _Pending | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self._traefik: TraefikPlane | None = None
        self._follow_task: asyncio.Task[None] | None = None
        self._external: ExternalPlane | None = None
        self._external_activity: dict[str, datetime] = {}
        self._stopping = False
        self._flush_crash: Exception | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def _open_nodes(self) -> None:
        """Set up the nodes to confirm on: the whole data plane with ``"external"``; with
        ``"traefik"`` or ``"inprocess"``, the ``data_plane_endpoints`` beside it, if any."""
        wanted = self.data_plane == "external" or bool(self.data_plane_endpoints)
        if wanted and self._external is None:
            try:
                self._external = ExternalPlane(
                    list(self.data_plane_endpoints),
                    require_all=bool(self.require_all_endpoints),
                    log=self.log,
                )
            except ValueError as exc:
                raise EventProxyError(str(exc)) from None

    async def _ensure_open(self) -> RouteLog:
        if self._log is not None:
            return self._log
        if self._open_lock is None:
            self._open_lock = asyncio.Lock()
        async with self._open_lock:
            if self._log is None:
                self._open_nodes()
                log = await open_log(self.log_url, etcd=self._etcd_options())
                self._projection = PlaneProjection(None, await log.load_table(), log=self.log)
                if self.data_plane == "traefik":
                    await self._open_traefik(log)
                self._log = log
                self.log.info(
                    "eventproxy: route log %s at seq %d with %d route(s)",
                    redact_url(self.log_url),
                    self._table.seq,
                    len(self._table),
                )
                self._follow_task = asyncio.create_task(
                    self._follow(log), name="eventproxy-follow-log"
                )
                if self._traefik is not None:
                    self._traefik.start_following(log, lambda: self._table)
        return self._log

    # -- following the log -----------------------------------------------------------------

    def _apply_new(self, records: Sequence[Record]) -> dict[str, str]:
        """Apply the records after the projection's seq; both the writer (its own batches, at
        once) and the follower (every batch, its own included) come through here."""
        seq = self._projection.seq
        fresh = [r for r in records if r.seq > seq]
        if fresh and fresh[0].seq == seq + 1:
            return self._projection.apply(fresh)
        return {}

    async def _follow(self, log: RouteLog) -> None:
        """Keep the table equal to the log's fold, whoever writes it (another hub, a repair)."""
        while True:
            try:
                async for record in log.watch(self._projection.seq + 1):
                    before = self._projection.seq
                    self._apply_new((record,))
                    if self._traefik is not None and self._projection.seq != before:
                        self._traefik.changed()  # another writer's change: project it now
                return  # the log was closed
            except CompactedError:
                self._projection.reset(await log.load_table())
                if self._traefik is not None:
                    self._traefik.changed()
            except LogResetError as exc:
                self.log.error(
                    "eventproxy: %s Following the log as it is now; JupyterHub's check_routes "
                    "adds back the routes of running servers.",
                    exc,
                )
                log.accept_reset()
                self._projection.reset(await log.load_table())
                if self._traefik is not None:
                    self._traefik.changed()
            except LogClosedError:
                return
            except LogError as exc:
                self.log.error("eventproxy: cannot follow %s: %s; retrying in 1s", log.url, exc)
                await asyncio.sleep(1.0)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not (self.ssl_cert and self.ssl_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.ssl_cert, self.ssl_key)
        return context

    async def _open_traefik(self, log: RouteLog) -> None:
        try:
            plane = TraefikPlane(
                self.traefik_settings(
                    public_url=self.public_url,
                    log_url=self.log_url,
                    should_start=bool(self.should_start),
                    ssl_cert=self.ssl_cert,
                    ssl_key=self.ssl_key,
                    etcd_options=self._etcd_options(),
                ),
                self.log,
            )
        except BaseException:
            await log.aclose()
            raise
        try:
            await plane.open(self._table)
        except BaseException:
            await plane.stop()
            await log.aclose()
            raise
        self._traefik = plane
        if not self.should_start:
            plane.start_scraping()

    async def start(self) -> None:
        """Open the log and start serving the public URL with the in-process data plane (or
        start traefik, with ``data_plane = "traefik"``)."""
        self._open_nodes()
        await self._ensure_open()
        if self.data_plane == "external":
            await self._confirm_visible(self._table.seq, self._table.seq, self.visibility_timeout)
            assert self._external is not None
            self.log.info(
                "eventproxy: data plane external: %s at seq %d",
                ", ".join(self._external.endpoints),
                self._table.seq,
            )
            return
        if self._traefik is not None:
            if self._traefik.process is None:
                await self._traefik.start()
                await self._confirm_visible(
                    self._table.seq, self._table.seq, self.visibility_timeout
                )
                self._traefik.start_scraping()
            return
        if self._serve_task is not None:
            return
        settings = ProxySettings(
            error_target=self.error_target or None,
            connect_timeout=self.backend_connect_timeout,
            # as configurable-http-proxy: JupyterHub's error page then says "server down"
            backend_down_status=503,
            parser=self.data_plane_parser,
        )
        self._plane = DataPlane(RoutingTable(), settings)
        self._projection.attach(self._plane)
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._serve_task = asyncio.create_task(self._serve(ready), name="eventproxy-dataplane")
        self._serve_task.add_done_callback(self._serving_ended)
        try:
            where = await ready
        except BaseException:
            self._serve_task = None
            raise
        self.log.info("eventproxy: in-process data plane serving %s (%s)", self.public_url, where)
        if self._external is not None:
            await self._confirm_visible(self._table.seq, self._table.seq, self.visibility_timeout)

    async def _confirm_visible(
        self,
        plane_seq: int,
        node_seq: int,
        within: float,
        nodes_check: Awaitable[None] | None = None,
    ) -> None:
        """Return once the traefik replicas route ``plane_seq`` (the projection's) and the nodes
        (``data_plane_endpoints``) have applied ``node_seq``, checked concurrently, each group
        by its own rule (see ``require_all_endpoints``); else raise what failed. With
        ``require_all_endpoints`` False, a group that fails (:class:`VisibilityTimeoutError`)
        is left out, with a warning, when the other group confirmed. ``nodes_check``: the
        nodes' confirmation of ``node_seq`` already under way (see :meth:`_confirm_early`)."""
        checks: list[Awaitable[object]] = []
        if self._traefik is not None:
            checks.append(self._traefik.confirm(plane_seq, within))
        if nodes_check is not None:
            checks.append(nodes_check)
        elif self._external is not None:
            checks.append(self._external.confirm(node_seq, within))
        if len(checks) <= 1:
            for check in checks:
                await check
            return
        results = await asyncio.gather(*checks, return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if not errors:
            return
        fatal = [e for e in errors if not isinstance(e, VisibilityTimeoutError)]
        if fatal:
            raise fatal[0]
        if not self.require_all_endpoints and len(errors) < len(results):
            self.log.warning(
                "eventproxy: seq %d confirmed, but not everywhere (left out): %s",
                node_seq,
                "; ".join(str(e) for e in errors),
            )
            return
        if len(errors) == 1:
            raise errors[0]
        raise VisibilityTimeoutError(" and ".join(str(e) for e in errors))

    async def _serve(self, ready: asyncio.Future[str]) -> None:
        plane = self._plane
        assert plane is not None
        url = urlsplit(self.public_url or "http://:8000/")
        try:
            async with anyio.create_task_group() as tg:
                if url.scheme == "http+unix":
                    path = unquote(url.netloc)
                    await tg.start(plane.serve_unix, path)
                    where = f"unix socket {path}"
                else:
                    host = url.hostname or ""
                    port = url.port or (443 if url.scheme == "https" else 80)
                    context = self._ssl_context()
                    bound = await tg.start(
                        lambda task_status: plane.serve_tcp(
                            host, port, ssl_context=context, task_status=task_status
                        )
                    )
                    where = f"{host or '*'}:{bound}{' TLS' if context else ''}"
                ready.set_result(where)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(
                    EventProxyError(f"eventproxy could not serve {self.public_url}: {exc}")
                    if isinstance(exc, Exception)
                    else exc
                )
                return
            raise

    def _serving_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task is not self._serve_task:
            return  # stopped on purpose
        exc = task.exception()
        self.log.error("eventproxy: the in-process data plane stopped unexpectedly: %r", exc)

    async def stop(self) -> None:
        """Finish (or fail, explicitly) the queued route changes, stop serving, close the log.

        New changes are refused from the start. The queued ones get ``visibility_timeout`` to
        finish; then those not yet written fail with :class:`EventProxyError` (they are not in
        the log), the batch being written gets another ``visibility_timeout`` and, if even that
        is not enough, is abandoned: its callers get :class:`VisibilityTimeoutError` (written or
        not, unknown). The log is closed only once nothing is writing to it. A failure of the
        flush itself (a bug, not a route's error: those go to their callers) is raised here.
        """
        self._stopping = True
        try:
            await self._finish_flush()
            crash, self._flush_crash = self._flush_crash, None
            task, self._serve_task = self._serve_task, None
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            traefik, self._traefik = self._traefik, None
            if traefik is not None:
                await traefik.stop()
            external, self._external = self._external, None
            if external is not None:
                await external.aclose()
        finally:
            follower, self._follow_task = self._follow_task, None
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            log, self._log = self._log, None
            self._plane = None
            self._stopping = False
            if log is not None:
                await log.aclose()
        if crash is not None:
            raise EventProxyError(f"eventproxy: writing route changes failed: {crash!r}") from crash

    async def _finish_flush(self) -> None:
        """Let the flush task end (see :meth:`stop`)."""
        task = self._flush_task
        if task is None:
            return
        done, _ = await asyncio.wait({task}, timeout=self.visibility_timeout)
        if not done:
            pending, self._pending = self._pending, _Pending()
            pending.fail(
                lambda event: EventProxyError(
                    f"eventproxy stopped before the route change for {event.routespec!r} was "
                    f"written: it is not in the log {self.log_url}"
                )
            )
            done, _ = await asyncio.wait({task}, timeout=self.visibility_timeout)
        if not done:
            task.cancel()  # the batch being written: its callers are told by _flush
            await asyncio.wait({task})

    # -- writing ---------------------------------------------------------------------------

    async def _commit(self, event: Event) -> None:
        """Append ``event`` (group-committed with concurrent callers) and wait until visible."""
        if self._stopping:
            raise EventProxyError(
                f"eventproxy is stopping: the route change for {event.routespec!r} was refused "
                "(not written)"
            )
        await self._ensure_open()
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._pending.events:
            self._pending.since = asyncio.get_running_loop().time()
        self._pending.events.append(event)
        self._pending.waiters.append(waiter)
        if self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())
        timeout = self.visibility_timeout
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except VisibilityTimeoutError:
            raise  # the flush's own verdict: which replicas, what seq; or stop() abandoned it
        except TimeoutError:
            raise VisibilityTimeoutError(
                f"route change for {event.routespec!r} was not confirmed durable and visible "
                f"within {timeout}s (log {self.log_url}); it may still apply"
            ) from None

    async def _flush(self) -> None:
        try:
            while self._pending.events:
                batch, self._pending = self._pending, _Pending()
                self._inflight = batch
                try:
                    await self._write(batch)
                except asyncio.CancelledError:  # stop() gave up on this batch
                    batch.fail(
                        lambda event: VisibilityTimeoutError(
                            f"eventproxy stopped while the route change for {event.routespec!r} "
                            f"was being written to the log {self.log_url}: it may or may not be "
                            "in the log"
                        )
                    )
                    raise
                except Exception as exc:  # a bug in _write: tell every caller, and stop()
                    self.log.error("eventproxy: writing route changes failed: %r", exc)
                    self._flush_crash = exc
                    pending, self._pending = self._pending, _Pending()
                    for failed in (batch, pending):
                        failed.fail(_always(exc))
                finally:
                    self._inflight = None
        finally:
            self._flush_task = None

    def _visibility_budget(self, batch: _Pending) -> float:
        """Seconds left for confirming ``batch`` on the replicas: ending before the callers'
        deadline, so that the error naming the replicas reaches them (not a bare timeout)."""
        left = batch.since + self.visibility_timeout - asyncio.get_running_loop().time()
        margin = min(0.25, self.visibility_timeout / 10)
        return max(0.05, left - margin)

    def _confirm_early(self, batch: _Pending) -> tuple[int, asyncio.Task[None]] | None:
        """Start asking the nodes for the seq ``batch`` will most likely get (the table's seq
        plus its length) before it is appended, so that their long-polls are already waiting
        when the change arrives: an add costs one round trip to the nodes fewer.

        The answer counts only if the append returns exactly that seq (then the nodes that
        have applied it have applied this batch); otherwise (another writer came first) it is
        cancelled and the real seq is confirmed after the append."""
        if self._external is None:
            return None
        predicted = self._projection.seq + len(batch.events)
        task = asyncio.get_running_loop().create_task(
            self._external.confirm(predicted, self._visibility_budget(batch))
        )
        task.add_done_callback(_retrieve)  # an answer nobody waits for is not an error
        return predicted, task

    async def _write(self, batch: _Pending) -> None:
        """Append one batch and make it visible; tell each caller what became of its change."""
        log = self._log
        assert log is not None
        early = self._confirm_early(batch)
        try:
            seqs = await log.append(batch.events, actor=self.actor)
        except Exception as exc:  # not written: the log is unchanged
            await _cancelled(early)
            batch.fail(_always(exc))
            return
        except BaseException:
            if early is not None:
                early[1].cancel()
            raise
        nodes_check: asyncio.Task[None] | None = None
        if early is not None:
            if early[0] == seqs[-1]:
                nodes_check = early[1]
            else:
                await _cancelled(early)
        try:
            await self._make_visible(batch, seqs, nodes_check)
        finally:
            if nodes_check is not None:
                nodes_check.cancel()  # a no-op once it has answered

    async def _make_visible(
        self, batch: _Pending, seqs: list[int], nodes_check: asyncio.Task[None] | None
    ) -> None:
        """Apply an appended batch and confirm it on the replicas; tell each caller."""
        log = self._log
        assert log is not None
        error: Exception | None = None
        refused: dict[str, str] = {}
        try:
            records = log.appended(seqs)  # our own batch, without reading it back
            if records is None or records[0].seq > self._projection.seq + 1:
                records = await log.read(self._projection.seq + 1)  # others' records first
            refused = self._apply_new(records)
            if self._traefik is not None:
                await self._traefik.catch_up(log, self._table)
            if self._traefik is not None or self._external is not None:
                within = self._visibility_budget(batch)
                await self._confirm_visible(self._table.seq, seqs[-1], within, nodes_check)
        except VisibilityTimeoutError as exc:  # durable; the plane's own precise message
            batch.fail(_always(exc))
            return
        except Exception as exc:
            error = exc
        for event, seq, waiter in zip(batch.events, seqs, batch.waiters, strict=True):
            if waiter.done():
                continue
            where = f"at seq {seq} of the log {self.log_url}"
            reason = refused.get(event.routespec)
            if error is not None:
                problem = DurableNotVisibleError(
                    f"the route change for {event.routespec!r} is durable ({where}) but could "
                    f"not be made visible: {error}; it applies when eventproxy next catches up",
                    routespec=event.routespec,
                    seq=seq,
                )
                problem.__cause__ = error
                waiter.set_exception(problem)
            elif reason is not None and isinstance(event, RouteAdded):
                waiter.set_exception(
                    DurableNotVisibleError(
                        f"the route {event.routespec!r} -> {event.target!r} is in the log "
                        f"({where}) but the data plane refused it: {reason}; it is not served",
                        routespec=event.routespec,
                        seq=seq,
                    )
                )
            else:
                waiter.set_result(None)

    @property
    def _table(self) -> RouteTable:
        return self._projection.table

    @property
    def traefik_plane(self) -> TraefikPlane | None:
        """The traefik data plane (its projector, API clients and, with ``should_start``, the
        managed traefik's files) while started with ``data_plane = "traefik"``; else None.
        For reading: tools and tests use it to look at what traefik is given."""
        return self._traefik

    # -- JupyterHub's proxy API ------------------------------------------------------------

    async def add_route(self, routespec: str, target: str, data: dict[str, Any]) -> None:
        spec = parse_routespec(routespec, host_routing=bool(self.host_routing))
        event = RouteAdded(spec.raw, target, data)
        try:  # refuse before anything is written what the data plane could not route
            plane_entry(RouteEntry.create(event.routespec, event.target, event.data, 0))
        except DataPlaneError as exc:
            raise InvalidRouteDataError(f"route {spec.raw!r} -> {target!r}: {exc}") from None
        # ... and what no log could store, so that it cannot fail the other changes of its batch
        record = Record(seq=1, ts=now_utc(), actor=self.actor, event=event)
        encode_or_refuse(lambda: encode_record(record), [record])
        await self._commit(event)
        if not spec.reachable:
            self.log.warning(
                "eventproxy: route %r has an empty path segment ('//'): it is stored and listed, "
                "but no request reaches it (routed literally, never normalised; "
                "docs/routespecs.md)",
                spec.raw,
            )

    def _check_mode_unless_known(self, spec: RouteSpec, known: bool) -> None:
        """A routespec of the other host-routing mode is a ValueError, unless it is ``known``.

        Deleting and reading a route that exists work whatever the current mode: a hub that
        turns host routing on (or off) finds the routes of the other mode in its log, and its
        check_routes deletes them. For anything else, JupyterHub expects the mode checked.
        """
        if not known:
            parse_routespec(spec.raw, host_routing=bool(self.host_routing))

    async def delete_route(self, routespec: str) -> None:
        spec = parse_routespec(routespec)
        await self._ensure_open()
        queued = [*self._pending.events, *(self._inflight.events if self._inflight else ())]
        pending = any(e.routespec == spec.raw for e in queued)
        known = spec.raw in self._table or pending
        self._check_mode_unless_known(spec, known)
        if not known:
            return  # idempotent: nothing to delete, nothing to record
        await self._commit(RouteRemoved(spec.raw))

    def _last_activity(self) -> dict[str, datetime]:
        """Routespec -> the latest activity any part of the data plane reports: the traefik
        replicas, the nodes (``_external_activity``, fetched by the caller) or the in-process
        plane."""
        by_name: list[Mapping[str, datetime]] = []
        if self._external is not None:
            by_name.append(self._external_activity)
        if self._plane is not None:
            by_name.append(self._plane.activity())
        latest: dict[str, datetime] = {}

        def seen(spec: str | None, ts: datetime) -> None:
            if spec is not None and (spec not in latest or ts > latest[spec]):
                latest[spec] = ts

        for found in by_name:
            for name, ts in found.items():
                seen(routespec_from_name(name), ts)
        if self._traefik is not None:
            for spec, ts in self._traefik.last_activity().items():
                seen(spec, ts)
        return latest

    async def get_all_routes(self) -> dict[str, dict[str, Any]]:
        await self._ensure_open()
        if self._external is not None:
            self._external_activity = await self._external.activity()
        activity = {spec: _iso(ts) for spec, ts in self._last_activity().items()}
        with paused_gc():  # ~3 new objects per route; a GC pass mid-way would dominate
            routes = {spec: entry.as_jupyterhub() for spec, entry in self._table.items()}
        for spec, last in activity.items():
            route = routes.get(spec)
            if route is not None:
                route["data"]["last_activity"] = last
        return routes

    async def get_route(self, routespec: str) -> dict[str, Any] | None:
        spec = parse_routespec(routespec)
        await self._ensure_open()
        entry = self._table.get(spec.raw)
        self._check_mode_unless_known(spec, entry is not None)
        if entry is None:
            return None
        route = entry.as_jupyterhub()
        name = name_for(spec.raw)
        found: list[datetime | None] = []
        if self._external is not None:
            self._external_activity = await self._external.activity()
            found.append(self._external_activity.get(name))
        if self._plane is not None:
            found.append(self._plane.activity().get(name))
        if self._traefik is not None:
            found.append(self._traefik.last_activity().get(spec.raw))
        last = max((ts for ts in found if ts is not None), default=None)
        if last is not None:
            route["data"]["last_activity"] = _iso(last)
        return route


def _retrieve(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()


async def _cancelled(early: tuple[int, asyncio.Task[None]] | None) -> None:
    """Cancel an early confirmation (see ``EventProxy._confirm_early``) and let it end."""
    if early is None:
        return
    task = early[1]
    task.cancel()
    await asyncio.wait({task})
