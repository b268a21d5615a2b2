"""The one exception hierarchy of eventproxy.

Every error eventproxy raises on purpose derives from :class:`EventProxyError`. Errors about
input the caller gave us (a bad routespec, bad route data) also derive from :class:`ValueError`,
because JupyterHub's proxy contract says so. Backend failures (``OSError``, HTTP errors from
etcd) are translated into these classes at the edge that talks to the backend, so callers never
see a raw transport exception.
"""

from __future__ import annotations


class EventProxyError(Exception):
    """Root of every error eventproxy raises on purpose."""


class InvalidRoutespecError(EventProxyError, ValueError):
    """A routespec that eventproxy cannot route exactly; the message names the offending part."""


class InvalidRouteDataError(EventProxyError, ValueError):
    """Route ``data`` or ``target`` that cannot be stored in the log unchanged."""


class InvalidLogURLError(EventProxyError, ValueError):
    """A ``log_url`` with an unknown scheme or a malformed location."""


class LogError(EventProxyError):
    """A route log could not be read or written."""


class LogClosedError(LogError):
    """The log was used after :meth:`RouteLog.aclose`."""


class LogLockedError(LogError):
    """Another process holds the log's writer lock."""


class LogUnavailableError(LogError):
    """The log's storage (a file system, an etcd cluster) could not be reached."""


class LogAccessError(LogError):
    """The log's storage refused our credentials (etcd user/password, client certificate)."""


class LogResetError(LogError):
    """The log's store was wiped or restored from an older backup: the history a reader had
    followed (up to ``seen_head``) is no longer there (the log is now at ``head``)."""

    def __init__(self, message: str, *, seen_head: int, head: int) -> None:
        super().__init__(message)
        self.seen_head = seen_head
        self.head = head


class CorruptLogError(LogError):
    """A stored record failed its integrity check or could not be decoded.

    ``offset`` is the byte offset (file log) and ``seq`` the sequence number, when known.
    """

    def __init__(self, message: str, *, offset: int | None = None, seq: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.seq = seq


class UnsupportedSchemaError(CorruptLogError):
    """A record written with a schema version this eventproxy does not know."""


class CompactedError(LogError):
    """The requested position was dropped by compaction; start from the snapshot instead."""

    def __init__(self, message: str, *, first_available: int):
        super().__init__(message)
        self.first_available = first_available


class AppendConflictError(LogError):
    """A concurrent writer moved the log's head; the append was not applied."""


class DurableNotVisibleError(EventProxyError):
    """A route change is durable in the log, but this proxy could not make it visible.

    Reading the change back or applying it to the data plane failed after the append succeeded
    (or the data plane refused the route). The log stays the source of truth: the change is not
    undone, and the proxy applies what it missed when it next catches up (the next change, or a
    restart); adding the same route again retries it. ``routespec`` and ``seq`` (the record's
    position in the log) say which change.
    """

    def __init__(self, message: str, *, routespec: str, seq: int | None) -> None:
        super().__init__(message)
        self.routespec = routespec
        self.seq = seq


class VisibilityTimeoutError(EventProxyError, TimeoutError):
    """A route change was durable but not confirmed visible on every data plane in time."""
