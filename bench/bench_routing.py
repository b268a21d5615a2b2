"""Routing-table lookup cost at 100 / 1,000 / 10,000 JupyterHub-shaped routes.

Each table has the hub's catch-all (``PathPrefix(`/`)``, priority 1), one
``PathPrefix(`/user/<name>/`)`` per user, a few host-routed and five fallback (``!``) rules
that outrank the user routes (so they are evaluated on every lookup: the worst case);
``ns_per_lookup_no_fallback`` is the same table without them (what JupyterHub produces).
Lookups cycle over a fixed mix of targets (user hits, a percent-encoded spelling, hub pages,
near misses), so the number is ns per lookup including target decoding. Bounded: a fixed
number of lookups per size. Also measured: the brute-force reference (every rule evaluated in
priority order) at the smallest size, to show what the trie saves, and ``apply`` cost.
"""

from __future__ import annotations

import random
import time
from typing import Any

from eventproxy_dataplane import RouterSpec, RoutingTable, ServerSpec, ServiceSpec


def _table(n: int, fallback: bool = True) -> tuple[RoutingTable, list[tuple[str, bytes]]]:
    rng = random.Random(n)
    upserts = [
        (
            RouterSpec("hub", "PathPrefix(`/`)", "hub", 1),
            ServiceSpec("hub", (ServerSpec("http://127.0.0.1:8081"),)),
        )
    ]
    names = [f"user{i:05d}" for i in range(n)]
    for i, name in enumerate(names):
        svc = ServiceSpec(f"s-{name}", (ServerSpec(f"http://127.0.0.1:{20000 + i % 20000}"),))
        upserts.append((RouterSpec(name, f"PathPrefix(`/user/{name}/`)", svc.name), svc))
    for i in range(5):
        svc = ServiceSpec(f"h{i}", (ServerSpec("http://127.0.0.1:9000"),))
        upserts.append(
            (RouterSpec(f"host{i}", f"Host(`h{i}.example`) && PathPrefix(`/`)", svc.name), svc)
        )
        if fallback:
            upserts.append(
                (RouterSpec(f"not{i}", f"!Host(`h{i}.example`) && Path(`/x{i}`)", svc.name), svc)
            )
    table = RoutingTable()
    problems = table.apply(upserts, [])
    assert not problems, problems
    targets: list[tuple[str, bytes]] = []
    for _ in range(200):
        name = rng.choice(names)
        targets += [
            ("hub.example", f"/user/{name}/lab/tree/notebook.ipynb?token=x".encode()),
            ("hub.example", f"/user/{name}/api/kernels/abc/channels".encode()),
            ("hub.example", f"/user/%75{name[1:]}/api/contents".encode()),
            ("HUB.example:443", b"/hub/api/users"),
            ("hub.example", f"/user/{name}x/lab".encode()),
        ]
    return table, targets


def _ns_per_lookup(
    table: RoutingTable, targets: list[tuple[str, bytes]], rounds: int, brute: bool = False
) -> float:
    fn = table.brute_force_lookup if brute else table.lookup
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for host, target in targets:
                fn(host, target)
        best = min(best, (time.perf_counter_ns() - start) / (rounds * len(targets)))
    return round(best, 1)


def run(ctx: Any) -> dict[str, Any]:
    sizes = [100, 1_000] if getattr(ctx, "quick", False) else [100, 1_000, 10_000]
    out: dict[str, Any] = {
        "ns_per_lookup": {},
        "ns_per_lookup_no_fallback": {},
        "apply_us_per_router": {},
    }
    for n in sizes:
        start = time.perf_counter()
        table, targets = _table(n)
        out["apply_us_per_router"][str(n)] = round((time.perf_counter() - start) / n * 1e6, 2)
        for host, target in targets[:50]:  # the trie agrees with the reference on this mix
            assert table.lookup(host, target) == table.brute_force_lookup(host, target)
        out["ns_per_lookup"][str(n)] = _ns_per_lookup(table, targets, rounds=5)
        plain, plain_targets = _table(n, fallback=False)
        out["ns_per_lookup_no_fallback"][str(n)] = _ns_per_lookup(plain, plain_targets, rounds=5)
        if n == sizes[0]:
            out[f"brute_force_ns_per_lookup_{n}"] = _ns_per_lookup(
                table, targets[:100], 2, brute=True
            )
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(None), indent=2))
