"""Markdown tables for the dataplane benchmark's result dict (pasted into bench/README.md)."""

from __future__ import annotations

from typing import Any

from bench._plot import target_order


def _num(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "n/a"


def _names(matrix: dict[str, Any]) -> list[str]:
    return target_order(sorted({n for c in matrix.values() for n in c["http"]}))


def _table(
    matrix: dict[str, Any], rows: list[str], cell: Any, title: str, row_label: str = "target"
) -> list[str]:
    cells = list(matrix)  # in the run's order (the caller passes it so)
    lines = [
        f"**{title}**",
        "",
        f"| {row_label} | " + " | ".join(cells) + " |",
        "|---|" + "---:|" * len(cells),
    ]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(cell(matrix[k], row) for k in cells) + " |")
    return [*lines, ""]


def _status(c: dict[str, Any], name: str) -> str | None:
    if name in c["errors"]:
        return "error"
    return None


def markdown_summary(results: dict[str, Any]) -> str:
    p = results["parameters"]
    order = [k for k in p.get("cells", []) if k in results["matrix"]] or list(results["matrix"])
    matrix = {k: results["matrix"][k] for k in order}
    names = _names(matrix)
    subjects = [n for n in names if n not in ("direct", "chp")]
    lines = [
        f"{p['routes']} routes; wrk -c{p['connections']}; {p['rounds']} rounds x "
        f"{p['duration']:g} s per cell and target (targets alternating, order rotated per "
        f"round); commit {p.get('git_head')}; load average {p.get('loadavg_before')} before, "
        f"{p.get('loadavg_after')} after. Cells: backend / wrk threads / paths (one = "
        "one user's path, all = round-robin over every user prefix).",
        "",
    ]

    def rps(c: dict[str, Any], name: str) -> str:
        h = c["http"].get(name)
        return _num(h["rps"], ".0f") if h else (_status(c, name) or "n/a")

    def vs(ref: str) -> Any:
        def cell(c: dict[str, Any], name: str) -> str:
            r = c["ratios"].get(f"{name}/{ref}")
            if r is None:
                return _status(c, name) or "n/a"
            return f"{_num(r['rps'], '.2f')} ({_num(r['rps_median_of_round_ratios'], '.2f')})"

        return cell

    def p99(c: dict[str, Any], name: str) -> str:
        h = c["http"].get(name)
        return _num(h["p99_ms"], ".1f") if h else (_status(c, name) or "n/a")

    lines += _table(matrix, names, rps, "req/s (median over rounds)")
    lines += _table(
        matrix,
        subjects,
        vs("chp"),
        "req/s relative to CHP: ratio of medians (median of per-round ratios)",
    )
    lines += _table(
        matrix,
        [n for n in subjects if n != "traefik"],
        vs("traefik"),
        "req/s relative to traefik: ratio of medians (median of per-round ratios)",
    )
    lines += _table(matrix, [n for n in names if n != "direct"], p99, "p99 latency, ms")

    def per_cpu(c: dict[str, Any], name: str) -> str:
        h = c["http"].get(name)
        if h is None:
            return _status(c, name) or "n/a"
        r = c["ratios"].get(f"{name}/chp")
        rel = f" ({_num(r['req_per_cpu_s'], '.2f')}x)" if r and r.get("req_per_cpu_s") else ""
        return _num(h.get("req_per_cpu_s"), ".0f") + rel

    lines += _table(
        matrix,
        [n for n in names if n != "direct"],
        per_cpu,
        "requests per CPU-second of the proxy's process (relative to CHP)",
    )
    errors = [(k, n, e) for k, c in matrix.items() for n, e in c["errors"].items()]
    if errors:
        lines += ["**errors**", ""] + [f"- {k} {n}: {e[:300]}" for k, n, e in errors] + [""]
    ws = results.get("websocket", {})
    if ws:
        lines += [
            "**WebSocket echo round trips (bench backend, idle proxies)**",
            "",
            "| target | p50 µs | p90 µs | p99 µs | n |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in target_order(list(ws)):
            w = ws[name]
            if "p50_us" not in w:
                lines.append(f"| {name} | {w.get('status')}: {w.get('reason', '')[:100]} | | | |")
                continue
            lines.append(
                f"| {name} | {w['p50_us']:.0f} | {w['p90_us']:.0f} | {w['p99_us']:.0f} "
                f"| {w['count']} |"
            )
        lines.append("")
    lines += _verdict_lines(results.get("verdicts", {}))
    lines += _profile_lines(results.get("profile", {}))
    return "\n".join(lines) + "\n"


def _verdict_lines(verdicts: dict[str, Any]) -> list[str]:
    if not verdicts:
        return []
    lines = ["**The issue's targets (judged on the worst cell)**", ""]
    for key, v in verdicts.items():
        if key == "gap to traefik":
            gaps = ", ".join(f"{k}: {g['min']:.2f}-{g['max']:.2f}" for k, g in sorted(v.items()))
            lines.append(f"- gap to traefik (req/s ratio range over cells): {gaps}")
            continue
        met = "MET" if v.get("met") else "NOT MET"
        detail = v.get("reason", "")
        if "worst_rps_ratio" in v:
            detail = f"worst cell {v['worst_rps_ratio']:.2f}x, best {v['best_rps_ratio']:.2f}x" + (
                f", worst p99 ratio {v['worst_p99_ratio']:.2f}" if v["worst_p99_ratio"] else ""
            )
        elif "p50_ratio" in v:
            detail = f"p50 {v['p50_us']:.0f} µs vs CHP {v['chp_p50_us']:.0f} µs"
        elif "growth_100_to_10000" in v:
            detail = f"10,000 / 100 routes: {v['growth_100_to_10000']:.2f}x ({v['ns_per_lookup']})"
        lines.append(f"- {key}: **{met}** ({detail})")
    return [*lines, ""]


def _profile_lines(profiles: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, prof in profiles.items():
        if prof.get("status") != "ok":
            lines.append(f"- profile {name}: {prof.get('status')}: {prof.get('reason', '')[:200]}")
            continue
        top = ", ".join(f"{k} {v}%" for k, v in list(prof["top_self_pct"].items())[:8])
        cats = ", ".join(f"{k} {v}%" for k, v in prof["inclusive_by_category_pct"].items())
        lines += [
            f"**profile {name}** ({prof['samples']} busy samples, "
            f"{prof['load_while_profiled']['rps']:.0f} req/s while sampled)",
            "",
            f"- top self: {top}",
            f"- by category (inclusive, overlapping): {cats}",
            "",
        ]
    return lines
