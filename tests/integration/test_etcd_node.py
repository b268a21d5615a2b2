"""``eventproxy dataplane --log-url etcd://... --state-dir``: a node (child process) following an
etcd log, its ``/health`` (and the ``min_seq`` long-poll), its last-known-good table served
while etcd is down, and a wiped etcd reported instead of silently followed."""

from __future__ import annotations

import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from hub_support import shared_backend

from eventproxy import RouteAdded, open_log
from support import ChildProcess, free_port, port_accepts, wait_until
from support.etcd import Etcd, require_etcd, running_etcd

pytestmark = pytest.mark.services


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[Etcd]:
    require_etcd()
    with running_etcd(tmp_path / "etcd") as e:
        yield e


def append(url: str, *events: RouteAdded) -> list[int]:
    async def go() -> list[int]:
        async with await open_log(url) as log:
            return await log.append(list(events))

    return anyio.run(go)


class Node:
    def __init__(self, tmp_path: Path, log_url: str) -> None:
        self.port, self.admin = free_port(), free_port()
        self.argv = [
            sys.executable, "-m", "eventproxy.cli", "dataplane", "--log-url", log_url,
            "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin}",
            "--state-dir", str(tmp_path / "state"),
        ]  # fmt: skip
        self.log_path = tmp_path / "node.log"
        self.child: ChildProcess | None = None

    def start(self) -> None:
        self.child = ChildProcess(self.argv, log_path=self.log_path)
        wait_until(
            lambda: port_accepts(self.admin) and port_accepts(self.port),
            timeout=30,
            what="the node's listeners",
            alive=self.child.check_alive,
        )

    def health(self, query: str = "") -> tuple[int, dict[str, Any]]:
        r = httpx.get(f"http://127.0.0.1:{self.admin}/health{query}", timeout=30)
        return r.status_code, r.json()

    def get(self, path: str) -> int:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5).status_code
        except httpx.HTTPError:
            return -1

    def stop(self) -> None:
        if self.child is not None:
            self.child.stop()


def test_node_health_long_poll_and_last_known_good(tmp_path: Path, etcd: Etcd) -> None:
    url = f"etcd://127.0.0.1:{etcd.client_port}/nodes"
    with shared_backend() as backend:
        target = f"http://127.0.0.1:{backend}"
        append(url, RouteAdded("/user/a/", target))
        node = Node(tmp_path, url)
        node.start()
        try:
            wait_until(lambda: node.health()[1].get("applied_seq") == 1, timeout=20, what="seq 1")
            status, health = node.health()
            assert status == 200
            assert (health["routes"], health["source"], health["log_url"]) == (1, "live", url)
            assert node.get("/user/a/x") == 200

            # the long-poll answers as soon as the seq is applied, 504 when it is not in time
            answer: list[tuple[int, dict[str, Any]]] = []
            poll = threading.Thread(
                target=lambda: answer.append(node.health("?min_seq=3&timeout=20"))
            )
            poll.start()
            append(url, RouteAdded("/user/b/", target), RouteAdded("/user/c/", target))
            poll.join(25)
            assert answer and answer[0][0] == 200 and answer[0][1]["applied_seq"] >= 3
            assert node.get("/user/c/x") == 200
            assert node.health("?min_seq=100&timeout=0.3")[0] == 504
            assert httpx.get(f"http://127.0.0.1:{node.admin}/health?min_seq=x").status_code == 400
            assert (tmp_path / "state" / "last-known-good.msgpack").exists()

            # kill -9 the node, stop etcd, start the node again: the last-known-good table
            assert node.child is not None
            node.child.kill()
            etcd.stop()
            node.start()
            assert node.get("/user/c/x") == 200
            status, health = node.health()
            assert (health["source"], health["applied_seq"], health["routes"]) == (
                "last-known-good",
                3,
                3,
            )
            # etcd comes back: the node catches up and says it is live
            etcd.start()
            append(url, RouteAdded("/user/d/", target))
            assert node.health("?min_seq=4&timeout=30")[0] == 200
            wait_until(lambda: node.health()[1]["source"] == "live", timeout=20, what="live")
            assert node.get("/user/d/x") == 200

            # wipe etcd: the node reports the reset and keeps serving, saying so
            etcd.stop()
            shutil.rmtree(etcd.data_dir)
            etcd.start()
            wait_until(
                lambda: node.health()[1].get("status") == "log-reset", timeout=30, what="reset"
            )
            health = node.health()[1]
            assert health["source"] == "last-known-good"
            assert "wiped or restored from an older backup" in health["log_reset"]
            assert "wiped or restored from an older backup" in node.log_path.read_text()
            assert node.get("/user/a/x") == 200
        finally:
            node.stop()
