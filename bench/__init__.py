"""eventproxy benchmarks: ``nox -s bench`` (or ``python -m bench [NAME ...]``).

Each ``bench/bench_<name>.py`` module defines ``run(ctx: BenchContext) -> dict``; the runner
writes the returned dict as ``bench/results/<name>.json`` (plus whatever plots the module saves
through ``ctx.results_dir``). Benchmarks quote ratios measured in one run, never absolute targets
from another machine.
"""
