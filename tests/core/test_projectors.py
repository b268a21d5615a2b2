"""The projector port's local implementations: the file projector (atomic, resumable, nudged)
and the runner that follows a log; the in-process plane behind the same port."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

from eventproxy import RouteAdded, RouteRemoved, open_log
from eventproxy.projection import PlaneProjection
from eventproxy.projectors import PlaneProjector, Projector, TraefikFileProjector, follow_log
from eventproxy.projectors.traefik_config import parse_toml_document, toml_document

pytestmark = pytest.mark.anyio


async def test_follow_log_projects_bursts_into_few_file_writes(tmp_path: Path) -> None:
    log = await open_log(f"file://{tmp_path / 'routes.log'}")
    path = tmp_path / "routes.toml"
    projector = TraefikFileProjector(path)
    assert isinstance(projector, Projector)
    seen: list[int] = []
    changed = anyio.Event()

    def on_applied(seq: int) -> None:
        seen.append(seq)
        if seq >= 1001:
            changed.set()

    try:
        await log.append([RouteAdded("/user/first/", "http://127.0.0.1:1", {})])
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: follow_log(log, projector, on_applied=on_applied))
            await log.append(
                [RouteAdded(f"/user/u{i}/", "http://127.0.0.1:2", {}) for i in range(1000)]
            )
            with anyio.fail_after(20):
                await changed.wait()
            tg.cancel_scope.cancel()
        assert projector.writes <= 3  # the start-up projection and the burst, not 1,000 writes
        assert path.read_text() == toml_document(await log.load_table())
        assert await projector.applied_seq() == 1001
    finally:
        await log.aclose()


async def test_file_projector_resumes_and_repairs_without_needless_writes(tmp_path: Path) -> None:
    log = await open_log(f"file://{tmp_path / 'routes.log'}")
    path = tmp_path / "routes.toml"
    try:
        await log.append([RouteAdded(f"/user/u{i}/", "http://127.0.0.1:2", {}) for i in range(5)])
        first = TraefikFileProjector(path)
        await first.reset(await log.load_table())
        inode = os.stat(path).st_ino
        again = TraefikFileProjector(path)  # a restart: the file is already right
        await again.reset(await log.load_table())
        assert again.writes == 0 and os.stat(path).st_ino == inode
        path.write_text(path.read_text().replace("127.0.0.1:2", "10.0.0.1:2"))  # edited by hand
        await again.reset(await log.load_table())
        assert path.read_text() == toml_document(await log.load_table())
        before = os.stat(path)
        await again.nudge()  # a fresh file (a rename over it), same content
        after = os.stat(path)
        assert (after.st_ino, after.st_ctime_ns) != (before.st_ino, before.st_ctime_ns)
        assert again.writes == 2
        assert parse_toml_document(path.read_text())[1] == 5
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    finally:
        await log.aclose()


async def test_file_projector_refuses_a_non_toml_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.toml"):
        TraefikFileProjector(tmp_path / "routes.yaml")


async def test_file_projector_write_failure_is_a_projection_error(tmp_path: Path) -> None:
    from eventproxy.projectors import ProjectionError

    projector = TraefikFileProjector(tmp_path / "missing-dir" / "routes.toml")
    log = await open_log("memory://proj-fail")
    try:
        await log.append([RouteAdded("/user/a/", "http://127.0.0.1:1", {})])
        with pytest.raises(ProjectionError, match="cannot write"):
            await projector.apply(await log.read(1))
        assert projector.seq == 0  # nothing half-applied
    finally:
        await log.aclose()


async def test_plane_projector_is_the_in_process_projection() -> None:
    log = await open_log("memory://proj-plane")
    try:
        await log.append(
            [RouteAdded("/user/a/", "http://127.0.0.1:1", {}), RouteRemoved("/user/a/")]
        )
        projector = PlaneProjector(PlaneProjection(None))
        assert isinstance(projector, Projector)
        await projector.apply(await log.read(1))
        assert projector.seq == await projector.applied_seq() == 2
        await projector.reset(await log.load_table(at=1))
        assert list(projector.table) == ["/user/a/"]
    finally:
        await log.aclose()


async def test_file_projector_keeps_its_own_copy_of_a_live_table(tmp_path: Path) -> None:
    """EventProxy's table is folded in place; a projector must not see it move unwritten."""
    from eventproxy.table import FoldingTable

    log = await open_log("memory://proj-live")
    try:
        await log.append([RouteAdded("/user/a/", "http://127.0.0.1:1", {})])
        folding = FoldingTable()
        projector = TraefikFileProjector(tmp_path / "routes.toml")
        await projector.reset(folding.view)
        folding.apply(await log.read(1))  # the live view moves to seq 1
        assert projector.seq == 0
        await projector.apply(await log.read(1))
        assert parse_toml_document((tmp_path / "routes.toml").read_text())[1] == 1
    finally:
        await log.aclose()
