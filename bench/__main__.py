"""Run the benchmarks: ``python -m bench [NAME ...] [--quick]``."""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


@dataclass
class BenchContext:
    results_dir: Path
    quick: bool


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "names", nargs="*", help=f"benchmarks to run (default: all of {available()})"
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="where the JSON, plots and stacks go (default: bench/results)",
    )
    args = parser.parse_args(argv)
    names = args.names or available()
    unknown = sorted(set(names) - set(available()))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {available()}")
    results_dir: Path = args.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(results_dir=results_dir, quick=args.quick)
    failed = []
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            result = module.run(ctx)
        except Exception as exc:  # report and go on with the other benchmarks
            print(f"!! {name} failed: {exc!r}", file=sys.stderr)
            failed.append(name)
            continue
        envelope = {
            "benchmark": name,
            "when": datetime.now(UTC).isoformat(),
            "machine": {
                "python": platform.python_version(),
                "platform": platform.platform(),
                "processor": platform.processor(),
            },
            "duration_s": round(time.perf_counter() - started, 3),
            "quick": args.quick,
            "results": result,
        }
        # a benchmark may name its file itself (the soak keeps its --quick run apart)
        stem = getattr(module, "results_stem", None)
        out = results_dir / f"{stem(ctx) if stem is not None else name}.json"
        out.write_text(json.dumps(envelope, indent=2, sort_keys=True) + "\n")
        print(json.dumps(result, indent=2, sort_keys=True))
        print(f"-> {out}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
