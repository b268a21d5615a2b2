"""The dataplane benchmark's in-process target: ``EventProxy`` on a stock asyncio loop.

``python -m bench._inprocess_hub --port P --backend URL --routes N --log-url URL`` is what a
JupyterHub process does with its proxy, minus the hub itself: it creates ``EventProxy`` (the
class JupyterHub loads for ``c.JupyterHub.proxy_class = "eventproxy"``), with the default
``data_plane = "inprocess"``, calls ``start()`` (which serves ``http://127.0.0.1:P/`` from
``eventproxy_dataplane`` inside this process, on this process's loop) and adds N user routes
``/user/user0000/`` ... through ``add_route``, as the hub does when servers start. The loop is
``asyncio.run``'s -- stock asyncio, never uvloop, as in JupyterHub (tornado on asyncio's default
policy); this is checked, and the loop class is printed in the ready line.

When ``--parser NAME`` is given and ``EventProxy`` has a ``data_plane_parser`` trait, it is
set; else the plane gets EventProxy's default settings. The ready line (one JSON object on
stdout, prefixed ``INPROCESS_READY``) says which loop and which parser the plane really runs
with, read back from the running plane. Runs until SIGTERM/SIGINT; then ``stop()``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
from typing import Any

from eventproxy import EventProxy

READY = "INPROCESS_READY"
PARSER_TRAIT = "data_plane_parser"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return f"{type(loop).__module__}.{type(loop).__qualname__}"


def plane_settings(proxy: EventProxy) -> dict[str, Any]:
    """The running in-process plane's ProxySettings, as JSON-able values."""
    plane = proxy._plane
    if plane is None:
        raise RuntimeError("EventProxy started without an in-process plane")
    settings = plane.settings
    return {
        f.name: getattr(settings, f.name)
        for f in dataclasses.fields(settings)
        if isinstance(getattr(settings, f.name), str | int | float | bool | None)
    }


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    if not type(loop).__module__.startswith("asyncio."):
        raise RuntimeError(f"not a stock asyncio loop: {loop_name(loop)}")
    proxy = EventProxy(public_url=f"http://127.0.0.1:{args.port}/", log_url=args.log_url)
    parser_set = False
    if args.parser and proxy.has_trait(PARSER_TRAIT):
        setattr(proxy, PARSER_TRAIT, args.parser)
        parser_set = True
    await proxy.start()
    specs = [f"/user/user{i:04d}/" for i in range(args.routes)]
    await asyncio.gather(
        *(proxy.add_route(s, args.backend, {"user": s.split("/")[2]}) for s in specs)
    )
    routes = await proxy.get_all_routes()
    settings = plane_settings(proxy)
    ready = {
        "loop": loop_name(loop),
        "routes": len(routes),
        "parser_requested": args.parser,
        "parser_trait_set": parser_set,
        "parser": settings.get("parser", "h11 (no parser setting at this commit)"),
        "io_edge": settings.get("io_edge"),
        "log_url": args.log_url,
    }
    print(f"{READY} {json.dumps(ready)}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await proxy.stop()


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._inprocess_hub", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="public port on 127.0.0.1")
    parser.add_argument("--backend", required=True, help="every route's target URL")
    parser.add_argument("--routes", type=int, default=1000, help="user routes to add")
    parser.add_argument("--log-url", required=True, help="EventProxy.log_url (file://...)")
    parser.add_argument("--parser", default="", help="EventProxy.data_plane_parser, if it has it")
    args = parser.parse_args(argv)
    if not args.backend.startswith("http://127.0.0.1:"):
        parser.error(f"--backend must be a loopback URL, got {args.backend!r}")
    if args.routes < 1:
        parser.error(f"--routes must be >= 1, got {args.routes}")
    asyncio.run(main(args))  # asyncio's default policy: the stock loop, as JupyterHub has


if __name__ == "__main__":
    cli()
