"""eventproxy: a highly-available, event-sourced proxy for JupyterHub.

Route changes are events in a log (memory, file or etcd); the routing table is a fold of the log;
data planes (traefik, or the pure-Python ``eventproxy_dataplane``) route from projections of it.
"""

from __future__ import annotations

from typing import Any

from ._errors import (
    AppendConflictError,
    CompactedError,
    CorruptLogError,
    DurableNotVisibleError,
    EventProxyError,
    InvalidLogURLError,
    InvalidRouteDataError,
    InvalidRoutespecError,
    LogAccessError,
    LogClosedError,
    LogError,
    LogLockedError,
    LogResetError,
    LogUnavailableError,
    UnsupportedSchemaError,
    VisibilityTimeoutError,
)
from .events import SCHEMA_VERSION, Event, Record, RouteAdded, RouteRemoved
from .log import CompactionResult, RouteLog, open_log
from .routespec import RouteSpec, parse_routespec, validate_routespec
from .snapshot import Snapshot
from .table import RouteEntry, RouteTable, fold, fold_all

__version__ = "0.1.0.dev0"

__all__ = [
    "SCHEMA_VERSION",
    "AppendConflictError",
    "CompactedError",
    "CompactionResult",
    "CorruptLogError",
    "DurableNotVisibleError",
    "Event",
    "EventProxy",
    "EventProxyError",
    "InvalidLogURLError",
    "InvalidRouteDataError",
    "InvalidRoutespecError",
    "LogAccessError",
    "LogClosedError",
    "LogError",
    "LogLockedError",
    "LogResetError",
    "LogUnavailableError",
    "Record",
    "RouteAdded",
    "RouteEntry",
    "RouteLog",
    "RouteRemoved",
    "RouteSpec",
    "RouteTable",
    "Snapshot",
    "UnsupportedSchemaError",
    "VisibilityTimeoutError",
    "fold",
    "fold_all",
    "open_log",
    "parse_routespec",
    "validate_routespec",
]


def __getattr__(name: str) -> Any:
    # EventProxy imports JupyterHub; load it only when asked for, so the core stays light.
    if name == "EventProxy":
        from .proxy import EventProxy

        return EventProxy
    raise AttributeError(f"module 'eventproxy' has no attribute {name!r}")
