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
        ("etcd://u:secret@127.0.0.1:2379/p", "credentials never go in the URL"),
        ("etcd:///p", "names no etcd endpoint"),
        ("etcd://127.0.0.1:2379/a//b", "empty segments"),
        ("etcd://127.0.0.1:2379/p?x=1", "query"),
        ("etcd://127.0.0.1:notaport/p", "bad port"),
    ],
)
async def test_bad_urls(url: str, match: str) -> None:
    with pytest.raises(InvalidLogURLError, match=match) as info:
        await open_log(url)
    assert "secret" not in str(info.value)
