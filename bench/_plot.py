"""The dataplane benchmark's figure: throughput, HTTP latency and WebSocket round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_dataplane(results: dict[str, Any], out: Path) -> Path:
    """Three panels (req/s; p50/p99 ms; WebSocket RTT p50/p99 µs), one bar group per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = ["direct", "chp", "traefik"]  # then the data-plane variants
    names = [n for n in fixed if n in results["targets"]]
    names += sorted(n for n in results["targets"] if n not in fixed)
    proxies = [n for n in names if n != "direct"]  # direct is ~10x faster: quoted, not drawn
    http = results["http"]
    ws = results["websocket"]
    fig, (ax_rps, ax_lat, ax_ws) = plt.subplots(1, 3, figsize=(15, 4.8))

    def unavailable(ax: Any, i: int, label: str) -> None:
        ax.text(i, 0, label, ha="center", va="bottom", rotation=90, fontsize=9, color="grey")

    for i, name in enumerate(proxies):
        h = http.get(name)
        if h is None:
            unavailable(ax_rps, i, results["targets"][name].get("status", "n/a"))
            continue
        ax_rps.bar(i, h["rps"], color="C0")
        ax_rps.scatter([i] * len(h["rounds_rps"]), h["rounds_rps"], color="k", s=10, zorder=3)
        ax_rps.text(i, h["rps"], f"{h['rps']:.0f}", ha="center", va="bottom", fontsize=8)
    for i, name in enumerate(names):
        h = http.get(name)
        if h is None:
            unavailable(ax_lat, i, results["targets"][name].get("status", "n/a"))
            continue
        ax_lat.bar(i - 0.2, h["p50_ms"], width=0.4, color="C1", label="p50" if i == 0 else None)
        ax_lat.bar(i + 0.2, h["p99_ms"], width=0.4, color="C3", label="p99" if i == 0 else None)
    for i, name in enumerate(names):
        w = ws.get(name)
        if w is None or "p50_us" not in w:
            unavailable(ax_ws, i, "n/a")
            continue
        ax_ws.bar(i - 0.2, w["p50_us"], width=0.4, color="C1", label="p50" if i == 0 else None)
        ax_ws.bar(i + 0.2, w["p99_us"], width=0.4, color="C3", label="p99" if i == 0 else None)

    params = results["parameters"]
    direct = http.get("direct", {}).get("rps")
    headroom = f"; direct: {direct:.0f}" if direct else ""
    ax_rps.set_title(
        f"HTTP GET req/s (wrk -c{params['connections']} -t{params['threads']}, "
        f"{params['routes']} routes{headroom})",
        fontsize=10,
    )
    ax_lat.set_title("HTTP latency (ms)")
    ax_ws.set_title(f"WebSocket echo round trip (µs, n={params['ws_round_trips']})")
    ax_rps.set_xticks(range(len(proxies)), proxies, rotation=15)
    for ax in (ax_lat, ax_ws):
        ax.set_xticks(range(len(names)), names, rotation=15)
    for ax in (ax_rps, ax_lat, ax_ws):
        ax.grid(axis="y", alpha=0.3)
    ax_lat.legend()
    ax_ws.legend()
    fig.suptitle(
        "eventproxy data plane vs configurable-http-proxy vs traefik (loopback, one run; "
        f"1-min load avg {params.get('loadavg_1m_before')} before, "
        f"{params.get('loadavg_1m_after')} after)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_soak(results: dict[str, Any], out: Path) -> Path:
    """RSS, open fds and the proxy's backend sockets (ESTABLISHED, CLOSE_WAIT) over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_rss, ax_fds, ax_sock) = plt.subplots(1, 3, figsize=(16, 4.8))
    loaded = results.get("loaded_s")
    for i, (name, target) in enumerate(sorted(results["targets"].items())):
        points = [s for s in target.get("samples", []) if "rss_mb" in s]
        if not points:
            continue
        color = f"C{i}"
        t = [s["t"] / 60 for s in points]
        ax_rss.plot(t, [s["rss_mb"] for s in points], color=color, label=name)
        ax_fds.plot(t, [s["fds"] for s in points], color=color, label=name)
        ax_sock.plot(
            t,
            [s["backend_sockets"].get("ESTABLISHED", 0) for s in points],
            color=color,
            linestyle="--",
            label=f"{name} ESTABLISHED",
        )
        ax_sock.plot(
            t,
            [s["backend_sockets"].get("CLOSE_WAIT", 0) for s in points],
            color=color,
            label=f"{name} CLOSE_WAIT",
        )
    for ax, title in (
        (ax_rss, "RSS (MB)"),
        (ax_fds, "open file descriptors"),
        (ax_sock, "sockets to backends, by state"),
    ):
        ax.set_title(title)
        ax.set_xlabel("minutes")
        ax.grid(alpha=0.3)
        if loaded:
            ax.axvline(loaded / 60, color="grey", linewidth=0.8)  # load ends, cool-down starts
        ax.legend(fontsize=8)
    p = results["parameters"]
    fig.suptitle(
        f"soak: {p['routes']} routes on own ports, {p['changes_per_s']:g} changes/s, "
        f"{p['http_per_s']:g} GET/s, {p['ws_per_s']:g} WS/s; load avg "
        f"{results.get('loadavg_before', ['?'])[0]} before, "
        f"{results.get('loadavg_after', ['?'])[0]} after (grey line: cool-down starts)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
