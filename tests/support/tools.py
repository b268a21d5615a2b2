"""Locate (and install on demand) the external tools tests and benchmarks use.

Node packages go into a project-local, git-ignored prefix (``.cache/node``), installed with the
machine's own ``npm``; nothing is installed globally. System tools (``wrk``) are only looked up:
a missing one raises :class:`ToolMissing` naming the tool and how to install it.

This module uses the standard library only, so ``.ci/run`` can call it before any virtualenv
exists: ``python3 tests/support/tools.py ensure-chp`` (installs only when missing).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
NODE_PREFIX = CACHE / "node"
CHP_PACKAGE = "configurable-http-proxy"
CHP_BIN = NODE_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"

INSTALL_HINTS = {
    "wrk": "apt-get install -y wrk  (Debian/Ubuntu; or build it from github.com/wg/wrk)",
    "node": "install Node.js >= 18 (e.g. apt-get install -y nodejs npm)",
    "npm": "install npm (e.g. apt-get install -y npm)",
}


class ToolMissing(RuntimeError):
    """A required external tool is not installed; the message says how to get it."""

    def __init__(self, tool: str, why: str = "") -> None:
        hint = INSTALL_HINTS.get(tool, "install it and put it on PATH")
        detail = f" ({why})" if why else ""
        super().__init__(f"{tool!r} not found{detail}; to install: {hint}")
        self.tool = tool


def which(tool: str) -> str | None:
    """``tool`` on PATH, or ``None``."""
    return shutil.which(tool)


def require(tool: str, why: str = "") -> str:
    """The path of ``tool`` on PATH, or :class:`ToolMissing` with an install hint."""
    path = which(tool)
    if path is None:
        raise ToolMissing(tool, why)
    return path


def _ignore_cache_dir() -> None:
    """Make ``.cache/`` ignore itself, so nothing installed there is ever committed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    marker = CACHE / ".gitignore"
    if not marker.exists():
        marker.write_text("# installed tools; never committed\n*\n")


def chp_path() -> Path | None:
    """The locally installed configurable-http-proxy executable, or ``None``."""
    override = os.environ.get("EVENTPROXY_CHP")
    if override:
        return Path(override)
    return CHP_BIN if CHP_BIN.exists() else None


def install_chp(*, quiet: bool = True) -> Path:
    """``npm install --prefix .cache/node configurable-http-proxy``; returns the executable."""
    require("node", "configurable-http-proxy runs on Node.js")
    npm = require("npm", "needed to install configurable-http-proxy")
    _ignore_cache_dir()
    NODE_PREFIX.mkdir(parents=True, exist_ok=True)
    argv = [npm, "install", "--prefix", str(NODE_PREFIX), "--no-audit", "--no-fund", CHP_PACKAGE]
    done = subprocess.run(argv, capture_output=quiet, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"npm install {CHP_PACKAGE} failed with {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    if not CHP_BIN.exists():
        raise RuntimeError(f"npm install succeeded but {CHP_BIN} does not exist")
    return CHP_BIN


def ensure_chp() -> Path:
    """The configurable-http-proxy executable, installing it locally first if needed."""
    return chp_path() or install_chp()


def main(argv: list[str]) -> int:
    commands = {
        "install-chp": lambda: print(install_chp(quiet=False)),
        "ensure-chp": lambda: print(chp_path() or install_chp(quiet=False)),
    }
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: tools.py {{{','.join(commands)}}}", file=sys.stderr)
        return 2
    try:
        commands[argv[0]]()
    except (ToolMissing, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
