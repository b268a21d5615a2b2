"""HTTP load with ``wrk``: throughput and latency percentiles, parsed from a lua ``done()`` hook.

wrk's ``--latency`` table rounds to two digits; instead a small lua script prints one JSON line
(``WRK_JSON {...}``) with the exact request count, errors and latency percentiles in
microseconds. The same script spreads requests round-robin over ``count`` paths built from a
``%d`` pattern (e.g. ``/user/user%04d/api/status`` over 1,000 users), so a proxy's routing
table is exercised rather than one cached entry. Loopback only; bounded by ``duration``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._support import require

WRK_LUA = r"""
local requests = {}
local n = 0
local i = 0

init = function(args)
  local pattern = args[1] or "/"
  local count = tonumber(args[2] or "1")
  for k = 0, count - 1 do
    requests[k + 1] = wrk.format("GET", string.format(pattern, k))
  end
  n = count
end

request = function()
  i = i % n + 1
  return requests[i]
end

done = function(summary, latency, requests_)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, ' ..
    '"errors_connect": %.0f, "errors_read": %.0f, "errors_write": %.0f, ' ..
    '"errors_status": %.0f, "errors_timeout": %.0f, ' ..
    '"mean_us": %.1f, "stdev_us": %.1f, "max_us": %.0f, ' ..
    '"p50_us": %.0f, "p90_us": %.0f, "p99_us": %.0f, "p999_us": %.0f}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""


class LoadError(RuntimeError):
    """wrk failed, or its output could not be understood."""


@dataclass(frozen=True)
class LoadResult:
    requests: int
    duration_s: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    mean_ms: float
    max_ms: float
    errors: int  # socket errors plus non-2xx/3xx responses
    non_2xx: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def parse_wrk_output(stdout: str) -> LoadResult:
    """The ``WRK_JSON`` line of a run with :data:`WRK_LUA`, as a :class:`LoadResult`."""
    for line in stdout.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise LoadError(f"no WRK_JSON line in wrk output:\n{stdout}")
    duration = raw["duration_us"] / 1e6
    if duration <= 0:
        raise LoadError(f"wrk reported a non-positive duration: {raw!r}")
    errors = sum(int(raw[k]) for k in raw if k.startswith("errors_"))
    return LoadResult(
        requests=int(raw["requests"]),
        duration_s=round(duration, 3),
        rps=round(raw["requests"] / duration, 1),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        p999_ms=raw["p999_us"] / 1000,
        mean_ms=round(raw["mean_us"] / 1000, 4),
        max_ms=raw["max_us"] / 1000,
        errors=errors,
        non_2xx=int(raw["errors_status"]),
    )


def run_wrk(
    base_url: str,
    *,
    pattern: str,
    count: int,
    duration: float,
    connections: int = 50,
    threads: int = 2,
    timeout_s: float = 5.0,
) -> LoadResult:
    """Run wrk against ``base_url`` for ``duration`` seconds and parse its report."""
    if not base_url.startswith("http://127.0.0.1:"):
        raise ValueError(f"benchmarks only target loopback, got {base_url!r}")
    if "%" not in pattern and count != 1:
        raise ValueError(f"pattern {pattern!r} has no %d placeholder for {count} paths")
    wrk = require("wrk", "the HTTP load generator of the benchmarks")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "report.lua"
        script.write_text(WRK_LUA)
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration))}s",
            f"--timeout={timeout_s:g}s",
            "--latency",
            "-s",
            str(script),
            base_url,
            "--",
            pattern,
            str(count),
        ]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=duration + 30, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadError(f"wrk did not finish within {duration + 30}s") from exc
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return parse_wrk_output(done.stdout)
