"""Markdown tables for the dataplane benchmark's result dict (pasted into bench/README.md)."""

from __future__ import annotations

from typing import Any

ORDER = ["direct", "chp", "traefik"]


def _names(results: dict[str, Any]) -> list[str]:
    names = [n for n in ORDER if n in results["targets"]]
    return names + sorted(n for n in results["targets"] if n not in ORDER)


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "n/a"


def markdown_summary(results: dict[str, Any]) -> str:
    p = results["parameters"]
    lines = [
        f"{p['routes']} routes; wrk -t{p['threads']} -c{p['connections']}, {p['rounds']} rounds "
        f"x {p['duration_s']:g} s per target; WebSocket: {p['ws_round_trips']} round trips; "
        f"1-min load average {p.get('loadavg_1m_before')} before, "
        f"{p.get('loadavg_1m_after')} after.",
        "",
        "| target | status | req/s (median) | req/s per round | p50 ms | p99 ms "
        "| WS p50 µs | WS p99 µs |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for name in _names(results):
        t = results["targets"][name]
        h = results["http"].get(name, {})
        w = results["websocket"].get(name, {})
        rounds = ", ".join(f"{r:.0f}" for r in h.get("rounds_rps", []))
        status = t["status"] if t["status"] == "ok" else f"{t['status']}: {t.get('reason', '')}"
        lines.append(
            f"| {name} | {status[:120]} | {_num(h.get('rps'), '.0f')} | {rounds} "
            f"| {_num(h.get('p50_ms'), '.2f')} | {_num(h.get('p99_ms'), '.2f')} "
            f"| {_num(w.get('p50_us'), '.0f')} | {_num(w.get('p99_us'), '.0f')} |"
        )
    if results["ratios"]:
        lines += [
            "",
            "| ratio | req/s (ratio of medians) | req/s (median of per-round ratios) "
            "| per round | p50 latency | p99 latency |",
            "|---|---:|---:|---|---:|---:|",
        ]
        for key, r in sorted(results["ratios"].items()):
            if key.endswith("/direct"):
                continue
            per_round = ", ".join(f"{x:.2f}" for x in r["rps_per_round"])
            cells = [
                key,
                _num(r["rps"], ".2f"),
                _num(r["rps_median_of_round_ratios"], ".2f"),
                per_round,
                _num(r["p50_latency"], ".2f"),
                _num(r["p99_latency"], ".2f"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
