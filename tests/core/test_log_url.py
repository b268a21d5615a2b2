"""log_url selects the backend; a bad URL is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventproxy import InvalidLogURLError, open_log
from eventproxy.log import FileRouteLog, MemoryRouteLog

pytestmark = pytest.mark.anyio


async def test_memory_and_file_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(await open_log("memory://"), MemoryRouteLog)
    async with await open_log(f"file://{tmp_path}/a.log") as log:
        assert isinstance(log, FileRouteLog) and log.path == tmp_path / "a.log"
    monkeypatch.chdir(tmp_path)
    async with await open_log("file:rel/b.log") as log:
        assert isinstance(log, FileRouteLog) and log.path == tmp_path / "rel" / "b.log"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("routes.log", "must look like"),
        ("ftp://x/y", "unknown scheme 'ftp'"),
        ("file://otherhost/x.log", "not a host"),
        ("file:///x.log?mode=1", "query"),
        ("etcd://127.0.0.1:2379/eventproxy", "etcd backend is not available"),
    ],
)
async def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(InvalidLogURLError, match=match):
        await open_log(url)
