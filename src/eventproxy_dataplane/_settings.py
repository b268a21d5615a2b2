"""Timeouts and limits of the reverse proxy, as one immutable value."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, fields
from urllib.parse import urlsplit

from ._errors import SettingsError
from ._http import PARSER_NAMES, httptools_available

_OPTIONAL = frozenset(
    {
        "connect_timeout",
        "header_timeout",
        "idle_timeout",
        "backend_response_timeout",
        "max_body_bytes",
        "max_connections",
    }
)
_INTEGER = frozenset(
    {
        "max_header_bytes",
        "max_header_count",
        "max_body_bytes",
        "max_connections",
        "pool_max_idle",
        "pool_max_idle_total",
        "read_size",
    }
)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """How the proxy treats clients and backends. Times are seconds; ``None`` means no limit.

    connect_timeout:          opening a connection to a backend (-> 504)
    header_timeout:           a client sending one request head (slowloris guard; -> 408, close)
    idle_timeout:             a keep-alive client connection waiting for its next request
    backend_response_timeout: a backend answering with its response head (-> 504)
    max_header_bytes:         request head size, request line included (-> 431)
    max_header_count:         number of request header fields (-> 431)
    max_body_bytes:           request body size (-> 413 and close; a chunked body that grows
                              past it after the response started closes the connection);
                              ``None`` (default): no limit, like configurable-http-proxy
    max_connections:          client connections served at once by the plane (all its proxy
                              listeners together); one beyond is closed as soon as it is
                              accepted, existing ones are untouched. ``None`` (default): derived
                              from the soft ``RLIMIT_NOFILE`` (288 for ``ulimit -n 1024``; see
                              ``_limits.default_max_connections``)
    error_target:             like configurable-http-proxy's ``--error-target``: on 404/502/503/504
                              the body of ``GET {error_target}/{code}?url=<escaped url>`` is sent
                              with the original status
    pool_max_idle:            idle keep-alive connections kept per backend server
    pool_max_idle_total:      idle keep-alive connections kept in all (the oldest is closed)
    pool_idle_timeout:        an idle pooled backend connection is closed after this long
    error_fetch_timeout:      fetching a page from ``error_target``
    activity_interval:        a router's last activity is recorded at most this often
    read_size:                bytes asked for per socket read
    forwarded_trusted_ips:    networks (CIDR) of proxies in front whose X-Forwarded-* headers
                              are kept (the client address is appended to X-Forwarded-For)
    backend_down_status:      the status for a backend that refused, reset or closed before
                              answering: 502 (traefik's choice) or 503 (configurable-http-proxy's,
                              which JupyterHub's error pages turn into "your server appears to
                              be down")
    parser:                   the HTTP/1.1 parser: "h11" (the reference), "httptools" (llhttp;
                              the ``fast`` extra), "auto" (httptools when importable)
    io_edge:                  "auto": on asyncio, sockets are asyncio protocols (the fast edge,
                              uvloop-friendly), on trio anyio streams; "anyio": anyio streams
                              everywhere (the reference edge)
    """

    connect_timeout: float | None = 10.0
    header_timeout: float | None = 60.0
    idle_timeout: float | None = 180.0
    backend_response_timeout: float | None = 300.0
    max_header_bytes: int = 65536
    max_header_count: int = 200
    max_body_bytes: int | None = None
    max_connections: int | None = None
    error_target: str | None = None
    pool_max_idle: int = 64
    pool_max_idle_total: int = 256
    pool_idle_timeout: float = 90.0
    error_fetch_timeout: float = 5.0
    activity_interval: float = 1.0
    read_size: int = 65536
    io_edge: str = "auto"
    parser: str = "auto"
    backend_down_status: int = 502
    forwarded_trusted_ips: tuple[str, ...] = ()

    def trusts(self, client_ip: bytes | None) -> bool:
        """Whether ``client_ip`` is in ``forwarded_trusted_ips``."""
        if client_ip is None or not self.forwarded_trusted_ips:
            return False
        try:
            address = ipaddress.ip_address(client_ip.decode("ascii"))
        except ValueError:
            return False
        return any(
            address in ipaddress.ip_network(net, strict=False) for net in self.forwarded_trusted_ips
        )

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("error_target", "io_edge", "parser", "forwarded_trusted_ips"):
                continue
            if f.name == "backend_down_status":
                if type(self.backend_down_status) is not int or self.backend_down_status not in (
                    502,
                    503,
                ):
                    raise SettingsError(
                        "ProxySettings.backend_down_status must be 502 or 503, got "
                        f"{self.backend_down_status!r}"
                    )
                continue
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            if f.name in _INTEGER:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise SettingsError(f"ProxySettings.{f.name} must be an integer, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise SettingsError(f"ProxySettings.{f.name} must be a number, got {value!r}")
            if not math.isfinite(value) or value <= 0:
                raise SettingsError(
                    f"ProxySettings.{f.name} must be a positive finite number, got {value!r}"
                )
        if not isinstance(self.forwarded_trusted_ips, tuple):
            raise SettingsError(
                "ProxySettings.forwarded_trusted_ips must be a tuple of networks, got "
                f"{self.forwarded_trusted_ips!r}"
            )
        for net in self.forwarded_trusted_ips:
            try:
                ipaddress.ip_network(net, strict=False)
            except (TypeError, ValueError):
                raise SettingsError(
                    "ProxySettings.forwarded_trusted_ips: not an IP network (like 10.0.0.0/8 or "
                    f"127.0.0.1): {net!r}"
                ) from None
        if self.parser not in PARSER_NAMES:
            raise SettingsError(
                f"ProxySettings.parser must be one of {', '.join(PARSER_NAMES)}, got "
                f"{self.parser!r}"
            )
        if self.parser == "httptools" and not httptools_available():
            raise SettingsError(
                "ProxySettings.parser is 'httptools' but httptools is not installed "
                "(pip install 'eventproxy[fast]')"
            )
        if self.io_edge not in ("auto", "anyio"):
            raise SettingsError(
                f"ProxySettings.io_edge must be 'auto' or 'anyio', got {self.io_edge!r}"
            )
        if self.error_target is not None:
            parts = urlsplit(self.error_target)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise SettingsError(
                    "ProxySettings.error_target must be an http(s) URL like "
                    f"'http://127.0.0.1:8081/hub/error', got {self.error_target!r}"
                )
            if parts.query or parts.fragment:
                raise SettingsError(
                    "ProxySettings.error_target must not have a query or fragment, got "
                    f"{self.error_target!r}"
                )
