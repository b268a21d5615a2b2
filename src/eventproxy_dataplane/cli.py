"""Standalone data-plane node: ``python -m eventproxy_dataplane --config dynamic.toml ...``.

Reads traefik-style dynamic configuration from a file-provider file (``--config``, watched for
changes) or from traefik's KV layout in etcd (``--etcd URL --prefix traefik``), serves HTTP on
every ``--listen HOST:PORT`` and, with ``--admin HOST:PORT``, ``/health`` and ``/metrics``.
Runs on asyncio (with uvloop when installed) or trio until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc

from ._config import ConfigProblem, DynamicConfig
from ._errors import SettingsError
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventproxy-dataplane",
        description="A pure-Python reverse proxy that reads traefik-style dynamic configuration.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--config", metavar="FILE", help="traefik file-provider file (toml/yaml/json)"
    )
    source.add_argument("--etcd", metavar="URL", help="etcd client URL, e.g. http://127.0.0.1:2379")
    parser.add_argument(
        "--prefix", default="traefik", help="KV root key in etcd (default: traefik)"
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=parse_address,
        action="append",
        help="serve HTTP here (repeatable; default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "--admin", metavar="HOST:PORT", type=parse_address, help="/health and /metrics"
    )
    parser.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--io-edge",
        choices=("auto", "anyio"),
        default="auto",
        help="auto: asyncio protocols on asyncio (fast); anyio: anyio streams (reference)",
    )
    parser.add_argument("--error-target", metavar="URL", help="error pages: GET URL/CODE?url=...")
    parser.add_argument("--connect-timeout", type=_seconds, default=10.0, metavar="SECONDS")
    parser.add_argument("--header-timeout", type=_seconds, default=60.0, metavar="SECONDS")
    parser.add_argument("--idle-timeout", type=_seconds, default=180.0, metavar="SECONDS")
    parser.add_argument("--backend-timeout", type=_seconds, default=300.0, metavar="SECONDS")
    parser.add_argument(
        "--forwarded-trusted-ip",
        metavar="CIDR",
        action="append",
        default=[],
        help="a proxy in front whose X-Forwarded-* headers are kept (repeatable)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return parser


def _settings(args: argparse.Namespace) -> ProxySettings:
    return ProxySettings(
        connect_timeout=args.connect_timeout,
        header_timeout=args.header_timeout,
        idle_timeout=args.idle_timeout,
        backend_response_timeout=args.backend_timeout,
        error_target=args.error_target,
        io_edge=args.io_edge,
        forwarded_trusted_ips=tuple(args.forwarded_trusted_ip),
    )


async def run(args: argparse.Namespace, settings: ProxySettings) -> None:
    """Serve until SIGINT or SIGTERM (or until cancelled)."""
    from ._sources import watch_etcd, watch_file

    plane = DataPlane(None, settings)
    first = anyio.Event()

    def on_config(config: DynamicConfig, problems: list[ConfigProblem]) -> None:
        table, more = RoutingTable.build(config)
        for problem in [*problems, *more]:
            logger.error("configuration problem: %s", problem)
        plane.set_table(table)
        logger.info("configuration %d installed: %d routers", plane.generation, len(table))
        first.set()

    async with anyio.create_task_group() as tg:

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("received signal %d, stopping", signum)
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(stop_on_signal)
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
        for host, port in args.listen or [("127.0.0.1", 8000)]:
            bound = await tg.start(plane.serve_tcp, host, port)
            print(f"eventproxy-dataplane listening on http://{host}:{bound}", flush=True)
        if args.admin:
            host, port = args.admin
            bound = await tg.start(plane.serve_admin, host, port)
            print(f"eventproxy-dataplane admin on http://{host}:{bound}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = _settings(args)
    except SettingsError as exc:
        parser.error(str(exc))
    backend_options: dict[str, Any] = {}
    if args.loop == "asyncio":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            backend_options["use_uvloop"] = True
    try:
        anyio.run(run, args, settings, backend=args.loop, backend_options=backend_options)
    except KeyboardInterrupt:
        return 130
    except (OSError, BaseExceptionGroup) as exc:
        os_error = _find_os_error(exc)
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
