"""The benchmarks' figures: the data-plane matrix, and the soak's RSS / fds / sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

ORDER = ["direct", "chp", "traefik"]


def target_order(names: list[str]) -> list[str]:
    """direct, chp, traefik, then the eventproxy targets (nodes, then in-process) by name."""
    rest = sorted(n for n in names if n not in ORDER)
    return [n for n in ORDER if n in names] + rest


def plot_dataplane(results: dict[str, Any], out: Path) -> Path:
    """The matrix: req/s relative to CHP per cell and target (bars: ratio of medians, dots: the
    per-round ratios), p99 latency per cell, and WebSocket round trips per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = results["matrix"]
    cells = [k for k in results["parameters"].get("cells", []) if k in matrix] or list(matrix)
    names = target_order(sorted({n for c in matrix.values() for n in c["http"]}))
    subjects = [n for n in names if n not in ("direct", "chp")]
    fig = plt.figure(figsize=(17, 9.5))
    grid = fig.add_gridspec(2, 3)
    ax_ratio = fig.add_subplot(grid[0, :])
    ax_p99 = fig.add_subplot(grid[1, :2])
    ax_ws = fig.add_subplot(grid[1, 2])
    width = 0.8 / max(1, len(subjects))
    for j, name in enumerate(subjects):
        xs, ys, dots_x, dots_y = [], [], [], []
        for i, key in enumerate(cells):
            r = matrix[key]["ratios"].get(f"{name}/chp")
            if r is None or r["rps"] is None:
                continue
            x = i - 0.4 + width * (j + 0.5)
            xs.append(x)
            ys.append(r["rps"])
            dots_x += [x] * len(r["rps_per_round"])
            dots_y += r["rps_per_round"]
        ax_ratio.bar(xs, ys, width=width, color=f"C{j}", label=name)
        ax_ratio.scatter(dots_x, dots_y, color="k", s=6, zorder=3)
    for level, style in ((1.0, "-"), (1.5, ":"), (2.0, "--")):
        ax_ratio.axhline(level, color="grey", linewidth=0.8, linestyle=style)
    ax_ratio.set_xticks(range(len(cells)), cells)
    ax_ratio.set_ylabel("req/s relative to CHP (1.0 = CHP)")
    ax_ratio.set_title(
        "req/s / configurable-http-proxy's, per cell (backend / wrk threads / paths); bars: ratio "
        "of medians, dots: per round; lines at 1.0, 1.5 (in-process target), 2.0 (node target)",
        fontsize=10,
    )
    ax_ratio.legend(fontsize=8, ncol=len(subjects))
    ax_ratio.grid(axis="y", alpha=0.3)
    proxies = [n for n in names if n != "direct"]
    width = 0.8 / max(1, len(proxies))
    for j, name in enumerate(proxies):
        xs, ys = [], []
        for i, key in enumerate(cells):
            h = matrix[key]["http"].get(name)
            if h is not None:
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(h["p99_ms"])
        color = "grey" if name == "chp" else f"C{subjects.index(name)}"
        ax_p99.bar(xs, ys, width=width, color=color, label=name)
    ax_p99.set_xticks(range(len(cells)), cells, fontsize=8)
    ax_p99.set_ylabel("ms")
    ax_p99.set_title("HTTP p99 latency under load (median over rounds; grey: CHP)", fontsize=10)
    ax_p99.legend(fontsize=7, ncol=3)
    ax_p99.grid(axis="y", alpha=0.3)
    ws = results.get("websocket", {})
    ws_names = [n for n in names if "p50_us" in ws.get(n, {})]
    for i, name in enumerate(ws_names):
        w = ws[name]
        ax_ws.bar(i - 0.2, w["p50_us"], width=0.4, color="C1", label="p50" if i == 0 else None)
        ax_ws.bar(i + 0.2, w["p99_us"], width=0.4, color="C3", label="p99" if i == 0 else None)
    ax_ws.set_xticks(range(len(ws_names)), ws_names, rotation=30, fontsize=8)
    ax_ws.set_yscale("log")
    ax_ws.set_title("WebSocket echo round trip (µs, log scale; bench backend)", fontsize=10)
    ax_ws.legend(fontsize=8)
    ax_ws.grid(axis="y", alpha=0.3)
    p = results["parameters"]
    fig.suptitle(
        f"eventproxy data plane vs configurable-http-proxy vs traefik: {p['routes']} routes, "
        f"wrk -c{p['connections']}, {p['rounds']} rounds x {p['duration']:g} s per cell and "
        f"target; load avg {p.get('loadavg_before')} before, {p.get('loadavg_after')} after "
        f"(commit {p.get('git_head')})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=100)
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
        warm_up = results.get("parameters", {}).get("warm_up")
        if warm_up:
            ax.axvline(warm_up / 60, color="grey", linewidth=0.8, linestyle=":")  # slopes from
        ax.legend(fontsize=8)
    p = results["parameters"]
    fig.suptitle(
        f"soak: {p['routes']} routes on own ports, {p['changes_per_s']:g} changes/s, "
        f"{p['http_per_s']:g} GET/s, {p['ws_per_s']:g} WS/s; load avg "
        f"{results.get('loadavg_before', ['?'])[0]} before, "
        f"{results.get('loadavg_after', ['?'])[0]} after (dotted: slopes from; grey: cool-down)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
