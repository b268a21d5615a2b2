"""``eventproxy project`` and ``eventproxy verify [--repair]``.

``project`` runs a projector (traefik KV in etcd, or a traefik file) against a log until
interrupted: re-projects at start (a restart after a crash resumes from what the projection
records), then applies new records in batches. Several may run at once on one etcd.

``verify`` compares a projection with the fold of the log and prints every difference; exit
0 when in sync, 1 on drift. ``--repair`` re-projects from the log (it never writes the log)
and verifies again.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TextIO

import anyio
import httpx

from eventproxy_dataplane.etcd import EtcdClient

from ._errors import EventProxyError
from .log import RouteLog, open_log
from .projectors import GatewayKV, Limits, TraefikFileProjector, TraefikKVProjector, follow_log
from .projectors.traefik_config import our_pairs
from .verify import Difference, diff_file, diff_kv, diff_node

__all__ = ["add_projector_commands"]

Adder = Callable[..., argparse.ArgumentParser]


def _targets(p: argparse.ArgumentParser, *, node: bool) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--traefik-etcd",
        metavar="URL",
        help="etcd endpoints of traefik's KV provider (http://h:2379[,http://h2:2379])",
    )
    group.add_argument("--traefik-file", metavar="PATH", help="traefik file-provider file (.toml)")
    if node:
        group.add_argument("--node", metavar="ADMIN_URL", help="a data-plane node's admin URL")
    p.add_argument("--root-key", default="traefik", help="traefik's KV rootKey (default: traefik)")
    p.add_argument(
        "--max-txn-ops",
        type=int,
        default=128,
        help="operations per etcd txn (etcd's --max-txn-ops; default 128)",
    )


def add_projector_commands(add: Adder, etcd_options: Callable[[argparse.Namespace], Any]) -> None:
    async def cmd_project(args: argparse.Namespace, out: TextIO) -> int:
        return await _project(args, out, etcd_options)

    async def cmd_verify(args: argparse.Namespace, out: TextIO) -> int:
        return await _verify(args, out, etcd_options)

    p = add(
        "project",
        cmd_project,
        "Project the log into traefik's configuration (etcd KV or a file) and follow it.",
    )
    _targets(p, node=False)
    p = add(
        "verify",
        cmd_verify,
        "Compare a projection with the log; exit 0 in sync, 1 on drift. --repair re-projects.",
    )
    _targets(p, node=True)
    p.add_argument("--repair", action="store_true", help="re-project from the log (never edits it)")


def _projector(args: argparse.Namespace, etcd_options: Callable[[argparse.Namespace], Any]) -> Any:
    if args.traefik_file:
        return TraefikFileProjector(args.traefik_file)
    try:
        limits = Limits(max_ops=args.max_txn_ops)
    except ValueError as exc:
        raise EventProxyError(f"--max-txn-ops: {exc}") from None
    return TraefikKVProjector(
        GatewayKV(client=EtcdClient(args.traefik_etcd, etcd_options(args))),
        args.root_key,
        limits=limits,
    )


async def _close(projector: Any) -> None:
    kv = getattr(projector, "kv", None)
    if kv is not None:
        await kv.client.aclose()


async def _project(
    args: argparse.Namespace, out: TextIO, etcd_options: Callable[[argparse.Namespace], Any]
) -> int:
    log = await open_log(args.log_url, readonly=True, etcd=etcd_options(args))
    projector = _projector(args, etcd_options)
    target = args.traefik_file or f"{args.traefik_etcd} {args.root_key}/"

    def applied(seq: int) -> None:
        if args.json:
            out.write(json.dumps({"applied_seq": seq, "target": target}) + "\n")
        else:
            out.write(f"eventproxy project: {target} at seq {seq}\n")
        out.flush()

    try:
        await follow_log(log, projector, on_applied=applied)
    finally:
        with anyio.CancelScope(shield=True):
            await _close(projector)
            await log.aclose()
    return 0


async def _differences(
    args: argparse.Namespace, log: RouteLog, projector: Any
) -> tuple[list[Difference], int]:
    table = await log.load_table()
    if args.node:
        base = args.node.rstrip("/")
        docs: list[Any] = []
        async with httpx.AsyncClient(timeout=30) as client:
            for page in ("/health", "/routes"):
                try:
                    resp = await client.get(base + page)
                    if page == "/routes" and resp.status_code == 404:
                        docs.append(None)  # an older node: reported as a difference
                        continue
                    resp.raise_for_status()
                    doc = resp.json()
                except (httpx.HTTPError, ValueError) as exc:
                    raise EventProxyError(
                        f"--node {args.node}: cannot read {page}: {exc}"
                    ) from None
                if not isinstance(doc, dict):
                    raise EventProxyError(f"--node {args.node}: {page} is not a JSON object")
                docs.append(doc)
        return diff_node(docs[0], docs[1], table), table.seq
    if isinstance(projector, TraefikFileProjector):
        return diff_file(await projector.read_text(), table), table.seq
    actual = await projector.read()
    return diff_kv(our_pairs(actual, projector.root), table, projector.root), table.seq


async def _verify(
    args: argparse.Namespace, out: TextIO, etcd_options: Callable[[argparse.Namespace], Any]
) -> int:
    if args.repair and args.node:
        raise EventProxyError(
            "--repair does not apply to --node: a node folds the log itself (restart it)"
        )
    log = await open_log(args.log_url, readonly=True, etcd=etcd_options(args))
    projector = None if args.node else _projector(args, etcd_options)
    target = args.node or args.traefik_file or f"{args.traefik_etcd} {args.root_key}/"
    try:
        found, head = await _differences(args, log, projector)
        repaired = False
        remaining = found
        if found and args.repair:
            assert projector is not None
            await projector.reset(await log.load_table())
            remaining, head = await _differences(args, log, projector)
            repaired = True
        if args.json:
            doc = {
                "target": target,
                "log_head": head,
                "in_sync": not remaining,
                "differences": [d.as_json() for d in found],
                "repaired": repaired,
                "remaining": [d.as_json() for d in remaining] if repaired else None,
            }
            out.write(json.dumps(doc, indent=2, default=str) + "\n")
        else:
            if not found:
                out.write(f"in sync: {target} matches the log at seq {head}\n")
            else:
                out.write(f"drift: {target} differs from the log at seq {head} ({len(found)}):\n")
                for d in found:
                    out.write("  " + d.line() + "\n")
                if repaired:
                    if remaining:
                        out.write(f"repair left {len(remaining)} difference(s)\n")
                    else:
                        out.write(f"repaired: {target} re-projected from the log at seq {head}\n")
        out.flush()
        return 0 if not remaining else 1
    finally:
        if projector is not None:
            await _close(projector)
        await log.aclose()
