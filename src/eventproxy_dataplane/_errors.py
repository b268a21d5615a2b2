"""The one exception hierarchy of eventproxy_dataplane.

Every error the data plane raises on purpose derives from :class:`DataPlaneError`. Errors about
input a caller gave us also derive from :class:`ValueError`. Configuration problems found while
loading routers and services are *not* raised: they are returned as ``ConfigProblem`` values so
that one bad router never takes the node down (traefik does the same: it disables the router).
"""

from __future__ import annotations


class DataPlaneError(Exception):
    """Root of every error eventproxy_dataplane raises on purpose."""


class RuleSyntaxError(DataPlaneError, ValueError):
    """A router rule that is not valid traefik v3 syntax, or uses a matcher we do not support."""


class ConfigSourceError(DataPlaneError):
    """A configuration source (file, etcd) could not be read; the last good config stays."""


class SettingsError(DataPlaneError, ValueError):
    """A proxy setting or a command-line option that cannot be used; the message names it."""


class BackendError(DataPlaneError):
    """A backend failed before or while answering; ``status`` is what the client gets."""

    status = 502


class BackendConnectError(BackendError):
    """Connecting to the backend failed (refused, unreachable, name not resolved)."""


class BackendTimeoutError(BackendError):
    """The backend did not accept the connection or answer in time."""

    status = 504


class BackendProtocolError(BackendError):
    """The backend closed, reset, or sent something that is not valid HTTP/1.1."""


class InvalidConfigError(DataPlaneError, ValueError):
    """A configuration value (server URL, router or service field) that cannot be used."""
