"""Route log backends, selected by URL (``memory://``, ``file:///path``, ``etcd://...``)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .._errors import InvalidLogURLError
from ._base import CompactionResult, LocalRouteLog, RouteLog
from ._urls import redact_url
from .file import FileRouteLog
from .memory import MemoryRouteLog, forget_memory_logs

if TYPE_CHECKING:
    from eventproxy_dataplane.etcd import EtcdOptions

__all__ = [
    "AUTO_COMPACT_RECORDS",
    "CompactionResult",
    "FileRouteLog",
    "LocalRouteLog",
    "MemoryRouteLog",
    "RouteLog",
    "file_path_from_url",
    "forget_memory_logs",
    "open_log",
    "redact_url",
]


def file_path_from_url(url: str) -> str:
    """The path of a ``file:`` URL: ``file:///abs/path`` or ``file:relative/path``."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        raise InvalidLogURLError(f"log URL {url!r} is not a file: URL")
    if parts.netloc not in ("", "localhost"):
        raise InvalidLogURLError(
            f"log URL {url!r}: file URLs name a local path (file:///abs/path or file:rel/path), "
            f"not a host ({parts.netloc!r})"
        )
    if parts.query or parts.fragment:
        raise InvalidLogURLError(f"log URL {url!r} must not have a query or fragment")
    path = unquote(parts.path)
    if not path:
        raise InvalidLogURLError(f"log URL {url!r} names no file")
    return path


AUTO_COMPACT_RECORDS = 1024


async def open_log(
    url: str,
    *,
    readonly: bool = False,
    etcd: EtcdOptions | None = None,
    auto_compact: int | None = AUTO_COMPACT_RECORDS,
) -> RouteLog:
    """Open the route log that ``url`` names; ``readonly`` takes no writer lock (file logs) and
    refuses appends. ``etcd`` gives an etcd log its credentials and TLS files (default: the
    ``EVENTPROXY_ETCD_*`` environment variables); credentials never go in the URL.

    ``auto_compact`` (a file log's writer; None: never): the log compacts itself once more than
    ``max(auto_compact, 2 * routes)`` records follow its snapshot (see
    :class:`~eventproxy.log.LocalRouteLog`), so a long-running writer's memory and file stay
    proportional to its live routes."""
    if not isinstance(url, str) or ("://" not in url and not url.startswith("file:")):
        raise InvalidLogURLError(
            f"log URL {redact_url(str(url))!r} must look like memory://, "
            "file:///path/routes.log or etcd://host:2379/prefix"
        )
    scheme = url.split(":", 1)[0].lower()
    if scheme == "memory":
        parts = urlsplit(url)
        return MemoryRouteLog(parts.netloc + parts.path)
    if scheme == "file":
        return await FileRouteLog.open(
            file_path_from_url(url), readonly=readonly, auto_compact=auto_compact
        )
    if scheme in ("etcd", "etcds"):
        from .etcd import EtcdRouteLog

        return await EtcdRouteLog.open(url, readonly=readonly, options=etcd)
    raise InvalidLogURLError(
        f"log URL {redact_url(url)!r}: unknown scheme {scheme!r} (use memory://, file:// or etcd://)"
    )
