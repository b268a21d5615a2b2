"""The dataplane benchmark's matrix: load shapes, per-cell summaries, ratios and the verdicts.

Pure functions over numbers (no processes), so they are unit-tested on their own. A *shape* is
one (backend, wrk threads, request paths) combination; a *cell* is one shape measured for every
target, in rounds that alternate the targets. Ratios are computed per cell only (a ratio across
shapes would compare different harnesses), both as the ratio of the medians over rounds and as
the median of the per-round ratios (rounds are adjacent in time, so a burst of other work on the
machine hits the compared targets alike).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BACKENDS = ("nginx", "bench")
THREADS = (1, 2)
# "one": every request to one user's path (the shape); "all": round-robin over every
# user prefix (the routing table exercised).
PATHS = ("one", "all")
ONE_USER = 500  # /user/user0500/...: a user in the middle of the table
PATTERN = "/user/user%04d/api/status"

# Verdict thresholds, from the "what must be shown".
STANDALONE_MIN_RATIO = 2.0
INPROCESS_MIN_RATIO = 1.5
LOOKUP_MAX_GROWTH = 1.25  # ns per lookup at 10,000 routes / at 100 routes: "flat"


@dataclass(frozen=True, order=True)
class Shape:
    backend: str
    threads: int
    paths: str

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.threads < 1:
            raise ValueError(f"wrk threads must be >= 1, got {self.threads}")
        if self.paths not in PATHS:
            raise ValueError(f"paths must be one of {PATHS}, got {self.paths!r}")

    @property
    def key(self) -> str:
        return f"{self.backend}/t{self.threads}/{self.paths}"

    def request(self, routes: int) -> tuple[str, int]:
        """(wrk path pattern, count): one user's path, or all ``routes`` prefixes in turn."""
        if self.paths == "one":
            return PATTERN % min(ONE_USER, routes - 1), 1
        return PATTERN, routes

    def describe(self, routes: int) -> dict[str, Any]:
        pattern, count = self.request(routes)
        return {
            "backend": self.backend,
            "wrk_threads": self.threads,
            "paths": self.paths,
            "path_pattern": pattern,
            "path_count": count,
        }


def shapes(
    backends: Iterable[str] = BACKENDS,
    threads: Iterable[int] = THREADS,
    paths: Iterable[str] = PATHS,
) -> list[Shape]:
    return [Shape(b, t, p) for b in backends for t in threads for p in paths]


def rotated(names: Sequence[str], by: int) -> list[str]:
    """``names`` starting at position ``by`` (mod len): round i starts with another target, so
    no target is always measured first (or always right after the same neighbour)."""
    if not names:
        return []
    k = by % len(names)
    return [*names[k:], *names[:k]]


def median(values: Sequence[float]) -> float:
    return round(statistics.median(values), 4)


def cell_summary(rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of one target in one cell (``rounds``: LoadResult dicts)."""
    if not rounds:
        raise ValueError("a cell summary needs at least one round")
    per_cpu = [r["req_per_cpu_s"] for r in rounds if r.get("req_per_cpu_s")]
    return {
        "rps": round(statistics.median(r["rps"] for r in rounds), 1),
        "p50_ms": median([r["p50_ms"] for r in rounds]),
        "p99_ms": median([r["p99_ms"] for r in rounds]),
        # requests per CPU-second of the proxy's process (all threads): what a request costs,
        # which a busy machine disturbs less than req/s (None if not read for every round)
        "req_per_cpu_s": round(statistics.median(per_cpu), 1)
        if per_cpu and len(per_cpu) == len(rounds)
        else None,
        "rounds_rps": [r["rps"] for r in rounds],
        "rounds_p99_ms": [r["p99_ms"] for r in rounds],
        "rounds": list(rounds),
    }


def ratio(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a`` relative to ``b`` (two cell summaries of the same cell, same number of rounds)."""
    per_round = [
        round(x / y, 3) for x, y in zip(a["rounds_rps"], b["rounds_rps"], strict=True) if y
    ]
    return {
        "rps": round(a["rps"] / b["rps"], 3) if b["rps"] else None,
        "rps_median_of_round_ratios": round(statistics.median(per_round), 3) if per_round else None,
        "rps_per_round": per_round,
        "p50_latency": round(a["p50_ms"] / b["p50_ms"], 3) if b["p50_ms"] else None,
        "p99_latency": round(a["p99_ms"] / b["p99_ms"], 3) if b["p99_ms"] else None,
        "req_per_cpu_s": round(a["req_per_cpu_s"] / b["req_per_cpu_s"], 3)
        if a.get("req_per_cpu_s") and b.get("req_per_cpu_s")
        else None,
    }


def cell_ratios(
    http: Mapping[str, Mapping[str, Any]], references: Sequence[str] = ("chp", "traefik")
) -> dict[str, Any]:
    """``subject/reference`` for every measured proxy against each measured reference."""
    out: dict[str, Any] = {}
    for ref in references:
        if ref not in http:
            continue
        for subject in http:
            if subject in (ref, "direct") or (ref == "traefik" and subject == "chp"):
                continue
            if len(http[subject]["rounds_rps"]) != len(http[ref]["rounds_rps"]):
                continue  # a round failed for one of them: per-round ratios would not pair up
            out[f"{subject}/{ref}"] = ratio(http[subject], http[ref])
    return out


def _both(r: Mapping[str, Any]) -> list[float]:
    """The two throughput ratios of a ratio dict (missing ones left out)."""
    return [v for v in (r.get("rps"), r.get("rps_median_of_round_ratios")) if v is not None]


def throughput_verdict(
    matrix: Mapping[str, Mapping[str, Any]],
    subject: str,
    *,
    minimum: float,
    p99_not_above_chp: bool,
) -> dict[str, Any]:
    """Does ``subject`` reach ``minimum`` x CHP in *every* cell, by both ratio measures (and,
    if asked, with p99 latency <= CHP's)? The worst cell decides; a cell where either was not
    measured counts as not shown."""
    per_cell: dict[str, Any] = {}
    missing: list[str] = []
    for key, cell in matrix.items():
        r = cell.get("ratios", {}).get(f"{subject}/chp")
        if r is None or not _both(r):
            missing.append(key)
            continue
        per_cell[key] = {
            "rps": r["rps"],
            "rps_median_of_round_ratios": r["rps_median_of_round_ratios"],
            "p99_latency": r["p99_latency"],
        }
    if not per_cell:
        return {"subject": subject, "met": False, "reason": "not measured", "missing": missing}
    worst = min(min(_both(v)) for v in per_cell.values())
    best = max(max(_both(v)) for v in per_cell.values())
    p99s = [v["p99_latency"] for v in per_cell.values() if v["p99_latency"] is not None]
    worst_p99 = max(p99s) if p99s else None
    met = not missing and worst >= minimum
    if p99_not_above_chp:
        met = met and worst_p99 is not None and worst_p99 <= 1.0
    return {
        "subject": subject,
        "target": f">= {minimum:g}x CHP req/s in every cell"
        + (", p99 <= CHP's" if p99_not_above_chp else ""),
        "met": met,
        "worst_rps_ratio": worst,
        "best_rps_ratio": best,
        "worst_p99_ratio": worst_p99,
        "cells": per_cell,
        "missing": missing,
    }


def websocket_verdict(websocket: Mapping[str, Mapping[str, Any]], subject: str) -> dict[str, Any]:
    s, c = websocket.get(subject, {}), websocket.get("chp", {})
    if "p50_us" not in s or "p50_us" not in c:
        return {"subject": subject, "met": False, "reason": "not measured"}
    return {
        "subject": subject,
        "target": "WebSocket round trip p50 <= CHP's",
        "met": s["p50_us"] <= c["p50_us"],
        "p50_us": s["p50_us"],
        "chp_p50_us": c["p50_us"],
        "p50_ratio": round(s["p50_us"] / c["p50_us"], 3),
    }


def lookup_verdict(lookup: Mapping[str, Any]) -> dict[str, Any]:
    ns = lookup.get("ns_per_lookup", {})
    if "100" not in ns or "10000" not in ns:
        return {"met": False, "reason": "100 and 10,000 routes not both measured"}
    growth = round(ns["10000"] / ns["100"], 3)
    return {
        "target": f"ns per lookup at 10,000 routes <= {LOOKUP_MAX_GROWTH:g}x at 100",
        "met": growth <= LOOKUP_MAX_GROWTH,
        "ns_per_lookup": ns,
        "growth_100_to_10000": growth,
    }
