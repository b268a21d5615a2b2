"""The ``eventproxy`` command: inspect, audit, replay and compact route logs; run the demo and
the data plane.

Every subcommand takes ``--log-url`` (default: ``$EVENTPROXY_LOG_URL``, else
``file:eventproxy-routes.log`` in the current directory, where JupyterHub keeps the log by
default) and prints for people by default, or JSON with ``--json``. Reading commands open the
log read-only, so they work while the hub is running; ``compact`` needs the writer lock and says
so if the hub holds it.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import anyio
import anyio.abc

import eventproxy_dataplane.cli as node_cli
from eventproxy_dataplane import SettingsError
from eventproxy_dataplane.etcd import EtcdOptions

from ._errors import EventProxyError
from .cli_project import add_projector_commands
from .demo import add_demo_arguments, cmd_demo
from .events import Record, RouteAdded
from .log import RouteLog, open_log, redact_url
from .log.etcd import etcd_options_from_env
from .routespec import validate_routespec
from .table import RouteTable, fold_all

__all__ = ["main"]

DEFAULT_LOG_URL = "file:eventproxy-routes.log"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- argument types ----------------------------------------------------------------------------


def parse_time(text: str) -> datetime:
    """ISO 8601 time; a time without a zone is taken as UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2026-11-27T10:00:00Z)"
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def parse_duration(text: str) -> timedelta:
    """``0``, ``90s``, ``15m``, ``24h``, ``7d``, ``2w``."""
    text = text.strip()
    if text == "0":
        return timedelta(0)
    unit = text[-1:].lower()
    try:
        if unit not in _UNITS:
            raise ValueError
        amount = float(text[:-1])
        if amount < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration (use e.g. 0, 90s, 15m, 24h, 7d, 2w)"
        ) from None
    return timedelta(seconds=amount * _UNITS[unit])


def parse_seq(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a sequence number (0, 1, 2, ...)")
    return value


def parse_routespec_arg(text: str) -> str:
    try:
        return validate_routespec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# -- output ------------------------------------------------------------------------------------


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dump(obj: object, out: TextIO) -> None:
    json.dump(obj, out, default=_json_default, ensure_ascii=False, indent=2)
    out.write("\n")


def record_json(record: Record) -> dict[str, Any]:
    event = record.event
    item: dict[str, Any] = {
        "seq": record.seq,
        "ts": record.ts.isoformat(),
        "actor": record.actor,
        "v": record.v,
        "type": event.kind,
        "routespec": event.routespec,
    }
    if isinstance(event, RouteAdded):
        item["target"] = event.target
        item["data"] = event.data
    return item


def record_line(record: Record) -> str:
    event = record.event
    ts = record.ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(event, RouteAdded):
        data = json.dumps(event.data, default=_json_default, ensure_ascii=False)
        what = f"added    {event.routespec} -> {event.target} {data}"
    else:
        what = f"removed  {event.routespec}"
    return f"{record.seq:>8}  {ts}  {record.actor:<12}  {what}"


def table_json(table: RouteTable) -> dict[str, Any]:
    return {
        "seq": table.seq,
        "routes": {
            spec: {"routespec": e.routespec, "target": e.target, "data": e.data, "seq": e.seq}
            for spec, e in sorted(table.items())
        },
    }


def print_table(table: RouteTable, out: TextIO) -> None:
    out.write(f"routing table at seq {table.seq}: {len(table)} route(s)\n")
    for spec, entry in sorted(table.items()):
        data = json.dumps(entry.data, default=_json_default, ensure_ascii=False)
        out.write(f"  {spec} -> {entry.target} {data} (seq {entry.seq})\n")


# -- commands ----------------------------------------------------------------------------------


async def _records(log: RouteLog) -> tuple[RouteTable, list[Record]]:
    """The base table (snapshot or empty) and the records after it."""
    base = await log.snapshot()
    table = base.table if base is not None else RouteTable()
    return table, await log.read(table.seq + 1)


async def cmd_log(args: argparse.Namespace, out: TextIO) -> int:
    log = await open_log(args.log_url, readonly=True, etcd=etcd_options(args))
    async with log:
        base, records = await _records(log)
    selected = [
        r
        for r in records
        if (args.routespec is None or r.event.routespec == args.routespec)
        and (args.since is None or r.ts >= args.since)
        and (args.until is None or r.ts <= args.until)
        and r.seq >= args.from_seq
    ]
    if args.limit is not None:
        selected = selected[-args.limit :] if args.limit else []
    if args.json:
        _dump({"snapshot_seq": base.seq, "events": [record_json(r) for r in selected]}, out)
        return 0
    if base.seq:
        out.write(f"(events up to seq {base.seq} were compacted into a snapshot)\n")
    for record in selected:
        out.write(record_line(record) + "\n")
    if not selected:
        out.write("no events match\n")
    return 0


async def cmd_audit(args: argparse.Namespace, out: TextIO) -> int:
    log = await open_log(args.log_url, readonly=True, etcd=etcd_options(args))
    async with log:
        base, records = await _records(log)
    spec = args.routespec
    history = [r for r in records if r.event.routespec == spec]
    current = fold_all(base, records)
    at_snapshot = base.get(spec)
    now = current.get(spec)
    if args.json:
        _dump(
            {
                "routespec": spec,
                "snapshot": {
                    "seq": base.seq,
                    "route": at_snapshot.as_jupyterhub() if at_snapshot else None,
                },
                "events": [record_json(r) for r in history],
                "current": now.as_jupyterhub() if now else None,
                "head": current.seq,
            },
            out,
        )
        return 0
    out.write(f"history of {spec}\n")
    if base.seq:
        state = f"{at_snapshot.target}" if at_snapshot else "absent"
        out.write(f"  at snapshot seq {base.seq}: {state}\n")
    for record in history:
        out.write(record_line(record) + "\n")
    if not history:
        out.write("  no events for this routespec after the snapshot\n")
    out.write(f"now (seq {current.seq}): {now.target if now else 'no route'}\n")
    return 0


async def cmd_replay(args: argparse.Namespace, out: TextIO) -> int:
    log = await open_log(args.log_url, readonly=True, etcd=etcd_options(args))
    async with log:
        if args.until is not None:
            base, records = await _records(log)
            # records are in seq order; the table as of a time stops at the first later one
            cut = next((i for i, r in enumerate(records) if r.ts > args.until), len(records))
            table = fold_all(base, records[:cut])
        else:
            head = await log.head()
            at = head if args.at is None else args.at
            if at > head:
                raise EventProxyError(f"seq {at} is beyond the log's head (seq {head})")
            table = await log.load_table(at=at)
    if args.json:
        _dump(table_json(table), out)
    else:
        print_table(table, out)
    return 0


async def cmd_compact(args: argparse.Namespace, out: TextIO) -> int:
    log = await open_log(args.log_url, etcd=etcd_options(args))
    async with log:
        result = await log.compact(retention=args.retention)
    if args.json:
        _dump(
            {
                "snapshot_seq": result.snapshot_seq,
                "dropped": result.dropped,
                "retained": result.retained,
            },
            out,
        )
    elif result.dropped:
        out.write(
            f"compacted {result.dropped} event(s) into a snapshot at seq {result.snapshot_seq}; "
            f"{result.retained} newer event(s) kept\n"
        )
    else:
        out.write(
            f"nothing older than {args.retention} to compact; {result.retained} event(s) kept\n"
        )
    return 0


async def cmd_dataplane(args: argparse.Namespace, out: TextIO) -> int:
    """A data-plane node: the data plane's own command, with the route log as one more source."""
    source = node_cli.config_source(args)
    if source is None:
        source = _log_source(args)
        what = args.log_url
    else:
        what = args.config or f"{args.etcd} (prefix {args.prefix})"

    def ready(listening: list[str], admin: str | None) -> None:
        if args.json:
            ready_line = {"listening": listening, "admin": admin, "source": what}
            if args.log_url:
                ready_line["log_url"] = redact_url(args.log_url)
            out.write(json.dumps(ready_line) + "\n")
        else:
            extra = f" (admin on {admin})" if admin else ""
            out.write(f"eventproxy dataplane: serving {what} on {', '.join(listening)}{extra}\n")
        out.flush()

    await node_cli.serve_node(args, args.node_settings, source, ready=ready)
    return 0


def _log_source(args: argparse.Namespace) -> node_cli.Source:
    from eventproxy_dataplane import DataPlane

    from .serve import follow_log_node

    etcd = etcd_options(args)

    async def source(
        plane: DataPlane, *, task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        await follow_log_node(
            args.log_url, plane, state_dir=args.state_dir, etcd=etcd, task_status=task_status
        )

    return source


# -- etcd credentials --------------------------------------------------------------------------


def add_etcd_arguments(parser: argparse.ArgumentParser) -> None:
    """``--etcd-*`` options for an etcd:// log; each falls back to ``$EVENTPROXY_ETCD_*``. The
    password is only ever read from a file or the environment, never from the command line."""
    group = parser.add_argument_group("etcd (for etcd:// and etcds:// log URLs)")
    group.add_argument(
        "--etcd-username", metavar="NAME", help="etcd user (default: $EVENTPROXY_ETCD_USERNAME)"
    )
    group.add_argument(
        "--etcd-password-file",
        metavar="FILE",
        help="file holding the etcd password (default: $EVENTPROXY_ETCD_PASSWORD)",
    )
    group.add_argument(
        "--etcd-ca-file", metavar="FILE", help="CA bundle (default: $EVENTPROXY_ETCD_CA_FILE)"
    )
    group.add_argument(
        "--etcd-cert-file",
        metavar="FILE",
        help="client certificate (default: $EVENTPROXY_ETCD_CERT_FILE)",
    )
    group.add_argument(
        "--etcd-key-file", metavar="FILE", help="client key (default: $EVENTPROXY_ETCD_KEY_FILE)"
    )


def etcd_options(args: argparse.Namespace) -> EtcdOptions:
    """The etcd options of a command: its flags, else the environment."""
    env = etcd_options_from_env()
    password = env.password
    password_file = getattr(args, "etcd_password_file", None)
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                password = f.read().rstrip("\r\n")
        except OSError as exc:
            raise EventProxyError(
                f"--etcd-password-file {password_file}: cannot read: {exc.strerror or exc}"
            ) from None
    try:
        return EtcdOptions(
            username=getattr(args, "etcd_username", None) or env.username,
            password=password,
            ca_file=getattr(args, "etcd_ca_file", None) or env.ca_file,
            cert_file=getattr(args, "etcd_cert_file", None) or env.cert_file,
            key_file=getattr(args, "etcd_key_file", None) or env.key_file,
        )
    except ValueError as exc:
        raise EventProxyError(f"etcd options: {exc}") from None


# -- parser ------------------------------------------------------------------------------------

Command = Callable[[argparse.Namespace, TextIO], Coroutine[Any, Any, int]]
LOG_URL_HELP = (
    "route log: memory://, file:///path/routes.log or etcd://host:2379/prefix "
    f"(default: $EVENTPROXY_LOG_URL or {DEFAULT_LOG_URL})"
)


def default_log_url() -> str:
    return os.environ.get("EVENTPROXY_LOG_URL", DEFAULT_LOG_URL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eventproxy",
        description="eventproxy: an event-sourced, highly-available proxy for JupyterHub.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Command, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--log-url", default=default_log_url(), help=LOG_URL_HELP)
        p.add_argument("--json", action="store_true", help="machine-readable JSON output")
        add_etcd_arguments(p)
        p.set_defaults(func=func)
        return p

    p = add("demo", cmd_demo, "Run a real JupyterHub behind eventproxy on 127.0.0.1.")
    add_demo_arguments(p)

    p = add("log", cmd_log, "List route events.")
    p.add_argument("--routespec", type=parse_routespec_arg, help="only this routespec")
    p.add_argument("--since", type=parse_time, help="only events at or after this time")
    p.add_argument("--until", type=parse_time, help="only events at or before this time")
    p.add_argument("--from-seq", type=parse_seq, default=0, help="only events from this seq on")
    p.add_argument("--limit", type=parse_seq, help="only the last N matching events")

    p = add("audit", cmd_audit, "The history of one route.")
    p.add_argument("routespec", type=parse_routespec_arg, help="e.g. /user/alice/")

    p = add("replay", cmd_replay, "The routing table at a point in the log.")
    at = p.add_mutually_exclusive_group()
    at.add_argument("--at", type=parse_seq, help="the table after this seq (default: head)")
    at.add_argument("--until", type=parse_time, help="the table as of this time")

    # The data plane's own command line (one option set), with the route log as a source: the
    # log (--log-url, the default), or traefik dynamic configuration (--config or --etcd).
    dataplane_help = (
        "Run a standalone data-plane node serving the routes of the log (read-only, follows "
        "appends), or traefik dynamic configuration from --config FILE or --etcd URL."
    )
    p = sub.add_parser("dataplane", help=dataplane_help, description=dataplane_help)
    node_cli.add_node_arguments(p).add_argument(
        "--log-url", help=f"{LOG_URL_HELP}; used when neither --config nor --etcd is given"
    )
    p.add_argument("--json", action="store_true", help="machine-readable JSON ready line")
    p.add_argument(
        "--state-dir",
        metavar="DIR",
        help="with --log-url: keep the last-known-good table here (written atomically) and "
        "serve it at start-up while the log is unreachable",
    )
    add_etcd_arguments(p)
    p.set_defaults(func=cmd_dataplane)

    add_projector_commands(add, etcd_options)

    p = add("compact", cmd_compact, "Snapshot the table and drop events older than the retention.")
    p.add_argument(
        "--retention",
        type=parse_duration,
        default=timedelta(days=30),
        help="keep events younger than this (e.g. 7d, 24h, 0; default 30d)",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run one command; its exit status. Output to a closed pipe ends it quietly (141)."""
    stream = out if out is not None else sys.stdout
    try:
        code = _main(argv, stream)
        stream.flush()  # a closed pipe must fail here, not in the interpreter's exit
    except BaseException as exc:
        if node_cli.broken_pipe(exc):
            return node_cli.stdout_closed()
        raise
    return code


def _main(argv: Sequence[str] | None, stream: TextIO) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    backend = getattr(args, "loop", "asyncio")
    options: dict[str, Any] = {}
    if args.command == "dataplane":
        if not (args.config or args.etcd or args.log_url):
            args.log_url = default_log_url()
        node_cli.configure_logging(args)
        try:
            args.node_settings = node_cli.settings_from_args(args)
        except SettingsError as exc:
            parser.error(f"dataplane: {exc}")
        options = node_cli.backend_options(backend)
    try:
        result: int = anyio.run(args.func, args, stream, backend=backend, backend_options=options)
    except KeyboardInterrupt:
        return 130
    except BaseException as exc:
        if node_cli.broken_pipe(exc):
            raise
        reason = _user_error(exc)
        if reason is None:
            raise
        print(f"eventproxy {args.command}: error: {reason}", file=sys.stderr)
        return 1
    return result


def _user_error(exc: BaseException) -> BaseException | None:
    """The error to show a user (ours, or an OSError such as a port in use), unwrapping task
    groups; ``None`` for anything else, which is a bug and keeps its traceback."""
    if isinstance(exc, EventProxyError | OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _user_error(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
