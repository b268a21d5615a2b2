"""Atomic routing-table swaps under load: no failed request, no dropped connection."""

from __future__ import annotations

import anyio
import pytest

from support.backends import HTTPBackend, HTTPClient, make_table, running_proxy

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("io_edge")]


async def test_request_in_flight_finishes_on_its_original_backend() -> None:
    async with anyio.create_task_group() as tg:
        old, new = HTTPBackend(name="old"), HTTPBackend(name="new")
        await tg.start(old.serve)
        await tg.start(new.serve)
        async with running_proxy(make_table({"r": ("PathPrefix(`/`)", [old.url])})) as proxy:
            async with await HTTPClient.connect(proxy.port) as c:
                await c.send_request("GET", "/slow/0.5")
                with anyio.fail_after(5):
                    while not old.requests:  # noqa: ASYNC110 - polls a plain list
                        await anyio.sleep(0.01)
                proxy.plane.set_table(make_table({"r2": ("PathPrefix(`/`)", [new.url])}))
                reply = await c.read_reply()
                assert reply.json()["backend"] == "old"
                # the same client connection now goes to the new table
                assert (await c.request("GET", "/")).json()["backend"] == "new"
            assert proxy.plane.generation == 2
        tg.cancel_scope.cancel()


async def test_hundred_swaps_under_load_fail_no_request() -> None:
    clients, per_client, swaps = 20, 150, 100
    async with anyio.create_task_group() as tg:
        backends = [HTTPBackend(name=f"b{i}") for i in range(3)]
        for b in backends:
            await tg.start(b.serve)
        tables = [
            make_table(
                {
                    f"user-{i}": ("PathPrefix(`/user/`)", [backends[i % 3].url]),
                    f"hub-{i}": ("PathPrefix(`/hub/`)", [backends[(i + 1) % 3].url]),
                    f"other-{i}": ("PathPrefix(`/other/`)", [backends[(i + 2) % 3].url]),
                }
            )
            for i in range(4)
        ]
        async with running_proxy(tables[0]) as proxy:
            failures: list[str] = []
            done = 0

            async def client(n: int) -> None:
                nonlocal done
                async with await HTTPClient.connect(proxy.port) as c:
                    for i in range(per_client):
                        path = ("/user/x", "/hub/y", "/other/z")[(n + i) % 3]
                        reply = await c.request("GET", f"{path}/{n}/{i}")
                        if reply.status != 200:
                            failures.append(f"{path}: {reply.status}")
                        done += 1

            async def swapper() -> None:
                for i in range(swaps):
                    proxy.plane.set_table(tables[(i + 1) % len(tables)])
                    await anyio.sleep(0.005)

            with anyio.fail_after(60):
                async with anyio.create_task_group() as load:
                    for n in range(clients):
                        load.start_soon(client, n)
                    load.start_soon(swapper)
            assert failures == []
            assert done == clients * per_client
            assert proxy.plane.generation == swaps + 1
            assert sum(len(b.requests) for b in backends) == clients * per_client
        tg.cancel_scope.cancel()
