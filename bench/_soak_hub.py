"""The soak benchmark's stand-in hub: ``EventProxy`` with its in-process data plane.

``python -m bench._soak_hub --log-url URL --port P --control-port C`` starts an ``EventProxy``
serving ``http://127.0.0.1:P/`` (routes in the log at URL) and takes route changes from the
benchmark on 127.0.0.1:C, one JSON object per line, each answered by one line once it is done:

    {"op": "add", "routespec": "/user/x/", "target": "http://127.0.0.1:1234"}  -> {"ok": true}
    {"op": "delete", "routespec": "/user/x/"}                                   -> {"ok": true}
    {"op": "stats"}  -> {"routes": n, "activity": n, "counters": n, "idle": n, "generation": n}

``add``/``delete`` return when ``add_route``/``delete_route`` return (the change is durable
and routed), exactly as JupyterHub's calls would. ``stats`` reports what the leak checks need:
routers with an activity record or with counters, and pooled idle backend connections.

``--external ADMIN_URL``: the hub of a standalone node instead (``data_plane = "external"``):
it serves nothing itself, appends to the log the node follows and returns from
``add_route``/``delete_route`` once the node's ``/health?min_seq=`` says it has the change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from eventproxy import EventProxy


async def handle(proxy: EventProxy, request: dict[str, Any]) -> dict[str, Any]:
    op = request.get("op")
    if op == "add":
        await proxy.add_route(request["routespec"], request["target"], {"user": "soak"})
    elif op == "delete":
        await proxy.delete_route(request["routespec"])
    elif op == "stats":
        plane = proxy._plane
        if plane is None:  # an external plane: the node reports for itself
            return {"ok": True, "routes": len(await proxy.get_all_routes())}
        return {
            "ok": True,
            "routes": len(plane.table),
            "activity": len(plane.activity()),
            "counters": len(plane._state.metrics.routers()),
            "idle": plane.pool.idle_count,
            "generation": plane.generation,
        }
    else:
        return {"ok": False, "error": f"unknown op {op!r}"}
    return {"ok": True}


async def main(log_url: str, port: int, control_port: int, external: str | None) -> None:
    proxy = EventProxy(public_url=f"http://127.0.0.1:{port}/", log_url=log_url)
    if external is not None:
        proxy.data_plane = "external"
        proxy.data_plane_endpoints = [external]
    await proxy.start()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await handle(proxy, json.loads(line))
                except Exception as exc:  # reported to the benchmark, which counts it
                    answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", control_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    print(f"soak hub serving 127.0.0.1:{port}, control on {control_port}", flush=True)
    async with server:
        await stop.wait()
    await proxy.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench._soak_hub", description=__doc__)
    parser.add_argument("--log-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--external", metavar="ADMIN_URL", help="a node's admin URL")
    args = parser.parse_args()
    from bench._tracemem import install

    install("hub")
    asyncio.run(main(args.log_url, args.port, args.control_port, args.external))
