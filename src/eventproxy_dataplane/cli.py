"""The data-plane node's command line: ``python -m eventproxy_dataplane --config dynamic.toml``.

Reads traefik-style dynamic configuration from a file-provider file (``--config``, watched for
changes) or from traefik's KV layout in etcd (``--etcd URL --prefix traefik``), serves HTTP on
every ``--listen HOST:PORT`` and, with ``--admin HOST:PORT``, ``/health`` and ``/metrics``.
Runs on asyncio (with uvloop when installed) or trio until SIGINT/SIGTERM.

The pieces are public so that ``eventproxy dataplane`` is the *same* command with one more
source (``--log-url``, a route log) and not a second program: :func:`add_node_arguments` (the
whole option set), :func:`settings_from_args`, :func:`config_source` (the traefik-style sources),
:func:`serve_node` (one node: a source, the listeners, signals) and :func:`backend_options`.
This package imports nothing from ``eventproxy``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio
import anyio.abc

from ._config import ConfigProblem, DynamicConfig
from ._errors import SettingsError
from ._http import resolve_parser
from ._routing import RoutingTable
from ._server import DataPlane
from ._settings import ProxySettings

logger = logging.getLogger("eventproxy_dataplane")

FIRST_CONFIG_WAIT = 10.0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:80`` too; an empty host means every interface) for argparse."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8000), got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _seconds(text: str) -> float | None:
    if text.lower() in ("none", "off", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'none', got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


Source = Callable[..., Coroutine[Any, Any, None]]
"""``source(plane, task_status=...)``: keeps ``plane``'s table current until cancelled, calling
``task_status.started()`` once the first table is installed (or it stopped waiting for one)."""

DEFAULT_LISTEN = ("127.0.0.1", 8000)


def _bytes(text: str) -> int | None:
    if text.lower() in ("none", "off"):
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of bytes or 'none', got {text!r}"
        ) from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of bytes, got {text!r}")
    return value


def add_node_arguments(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """Add the node's whole option set to ``parser``.

    Returns the mutually exclusive group of sources (``--config``, ``--etcd``), to which a
    caller adds its own (``eventproxy dataplane`` adds ``--log-url``).
    """
    sources = parser.add_argument_group("source (one of)")
    source = sources.add_mutually_exclusive_group()
    source.add_argument(
        "--config", metavar="FILE", help="traefik file-provider file (toml/yaml/json), watched"
    )
    source.add_argument(
        "--etcd", metavar="URL", help="traefik's KV layout in etcd, e.g. http://127.0.0.1:2379"
    )
    sources.add_argument(
        "--prefix", default="traefik", help="KV root key with --etcd (default: traefik)"
    )
    node = parser.add_argument_group("node")
    node.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=parse_address,
        action="append",
        help="serve HTTP here (repeatable; default 127.0.0.1:8000)",
    )
    node.add_argument(
        "--admin",
        metavar="HOST:PORT",
        type=parse_address,
        help="private listener for /health and /metrics",
    )
    node.add_argument(
        "--loop",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="event loop (asyncio uses uvloop when it is installed)",
    )
    node.add_argument(
        "--io-edge",
        choices=("auto", "anyio"),
        default="auto",
        help="auto: asyncio protocols on asyncio (fast); anyio: anyio streams (reference)",
    )
    node.add_argument(
        "--parser",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="HTTP/1.1 parser: h11 (reference), httptools (llhttp), auto: httptools if installed",
    )
    node.add_argument("--error-target", metavar="URL", help="error pages: GET URL/CODE?url=...")
    node.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="SECONDS")
    node.add_argument("--header-timeout", type=_seconds, default=60.0, metavar="SECONDS")
    node.add_argument("--idle-timeout", type=_seconds, default=180.0, metavar="SECONDS")
    node.add_argument("--backend-timeout", type=_seconds, default=300.0, metavar="SECONDS")
    node.add_argument(
        "--max-body-bytes",
        type=_bytes,
        default=None,
        metavar="N",
        help="refuse request bodies larger than N bytes with 413 (default: no limit)",
    )
    node.add_argument(
        "--max-connections",
        type=_count,
        default=None,
        metavar="N",
        help="client connections served at once; one more is closed when accepted (default: "
        "from ulimit -n, 288 for 1024)",
    )
    node.add_argument(
        "--forwarded-trusted-ip",
        metavar="CIDR",
        action="append",
        default=[],
        help="a proxy in front whose X-Forwarded-* headers are kept (repeatable)",
    )
    node.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return source


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventproxy-dataplane",
        description="A pure-Python reverse proxy that reads traefik-style dynamic configuration.",
    )
    add_node_arguments(parser)
    return parser


def settings_from_args(args: argparse.Namespace) -> ProxySettings:
    """The node's :class:`ProxySettings` from its options (``SettingsError`` if invalid)."""
    return ProxySettings(
        connect_timeout=args.connect_timeout,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        backend_response_timeout=args.backend_timeout,
        max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections,
        error_target=args.error_target,
        io_edge=args.io_edge,
        parser=args.parser,
        forwarded_trusted_ips=tuple(args.forwarded_trusted_ip),
    )


def backend_options(loop: str) -> dict[str, Any]:
    """anyio backend options for ``--loop``: uvloop on asyncio when it is installed."""
    if loop != "asyncio":
        return {}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def configure_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def config_source(args: argparse.Namespace) -> Source | None:
    """The traefik-style source the options name (``--config``/``--etcd``), or ``None``."""
    if not (args.config or args.etcd):
        return None

    async def source(
        plane: DataPlane, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        from ._sources import watch_etcd, watch_file

        first = anyio.Event()

        def on_config(config: DynamicConfig, problems: list[ConfigProblem]) -> None:
            table, more = RoutingTable.build(config)
            for problem in [*problems, *more]:
                logger.error("configuration problem: %s", problem)
            plane.set_table(table)
            logger.info("configuration %d installed: %d routers", plane.generation, len(table))
            first.set()

        async with anyio.create_task_group() as tg:
            if args.config:
                tg.start_soon(watch_file, args.config, on_config)
            else:
                tg.start_soon(watch_etcd, args.etcd, args.prefix, on_config)
            with anyio.move_on_after(FIRST_CONFIG_WAIT):
                await first.wait()
            if not first.is_set():
                logger.warning(
                    "no configuration after %ss; serving 404 until one arrives", FIRST_CONFIG_WAIT
                )
            task_status.started()

    return source


def print_ready(listening: list[str], admin: str | None) -> None:
    for where in listening:
        print(f"eventproxy-dataplane listening on http://{where}", flush=True)
    if admin is not None:
        print(f"eventproxy-dataplane admin on http://{admin}", flush=True)


async def serve_node(
    args: argparse.Namespace,
    settings: ProxySettings,
    source: Source,
    *,
    ready: Callable[[list[str], str | None], None] = print_ready,
) -> None:
    """One node: ``source`` feeds the table, then the listeners of ``--listen`` and ``--admin``
    open and ``ready(listening, admin)`` is called; serves until SIGINT/SIGTERM or cancelled."""
    plane = DataPlane(None, settings)
    logger.info(
        "node: event loop %s, I/O edge %s, parser %s, timeouts connect=%s header=%s idle=%s "
        "backend=%s, error target %s",
        _loop_name(),
        settings.io_edge,
        resolve_parser(settings.parser),
        settings.connect_timeout,
        settings.header_timeout,
        settings.idle_timeout,
        settings.backend_response_timeout,
        settings.error_target,
    )
    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("received signal %d, stopping", signum)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
        await tg.start(lambda task_status: source(plane, task_status=task_status))
        listening = []
        for host, port in args.listen or [DEFAULT_LISTEN]:
            bound = await tg.start(plane.serve_tcp, host, port)
            listening.append(f"{host}:{bound}")
        admin = None
        if args.admin:
            host, port = args.admin
            bound = await tg.start(plane.serve_admin, host, port)
            admin = f"{host}:{bound}"
        ready(listening, admin)


def _loop_name() -> str:
    """The event loop running now: trio, asyncio, or uvloop (asyncio's loop from uvloop)."""
    import asyncio

    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return "trio"  # the only other backend --loop offers
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def broken_pipe(exc: BaseException) -> bool:
    """``exc`` is (or a task group's exceptions include) a write to a closed pipe."""
    if isinstance(exc, BrokenPipeError):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return any(broken_pipe(inner) for inner in exc.exceptions)
    return False


def stdout_closed() -> int:
    """Exit as a Unix tool does when its output pipe is closed (``cmd | head``): quietly, with
    the status of a process killed by SIGPIPE (141). stdout is pointed at /dev/null first, so
    that the interpreter's last flush of what is still buffered cannot complain either."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    try:
        code = _main(argv)
        sys.stdout.flush()  # a closed pipe must fail here, not in the interpreter's exit
    except BaseException as exc:
        if broken_pipe(exc):
            return stdout_closed()
        raise
    return code


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    source = config_source(args)
    if source is None:
        parser.error("one of the arguments --config --etcd is required")
    configure_logging(args)
    try:
        settings = settings_from_args(args)
    except SettingsError as exc:
        parser.error(str(exc))
    try:
        options = backend_options(args.loop)
        anyio.run(serve_node, args, settings, source, backend=args.loop, backend_options=options)
    except KeyboardInterrupt:
        return 130
    except (OSError, BaseExceptionGroup) as exc:
        os_error = None if broken_pipe(exc) else _find_os_error(exc)
        if os_error is None:
            raise
        print(f"eventproxy-dataplane: {os_error}", file=sys.stderr)
        return 1
    return 0


def _find_os_error(exc: BaseException) -> OSError | None:
    """The OSError (e.g. a port already in use) behind ``exc``, unwrapping task groups."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find_os_error(inner)
            if found is not None:
                return found
    return None
