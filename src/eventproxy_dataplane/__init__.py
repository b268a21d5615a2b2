"""eventproxy_dataplane: a pure-Python reverse proxy that reads traefik-style dynamic configuration.

It imports nothing from ``eventproxy`` or ``jupyterhub``; it runs on asyncio or trio via anyio.
"""

from ._config import (
    ConfigProblem,
    DynamicConfig,
    RouterSpec,
    ServerSpec,
    ServiceSpec,
    config_from_kv,
    parse_dynamic_config,
)
from ._errors import (
    BackendConnectError,
    BackendError,
    BackendProtocolError,
    BackendTimeoutError,
    ConfigSourceError,
    DataPlaneError,
    InvalidConfigError,
    RuleSyntaxError,
    SettingsError,
)
from ._routing import Route, RoutingTable
from ._rules import format_rule, parse_rule, quote_rule_value
from ._server import DataPlane
from ._settings import ProxySettings
from ._sources import ConfigCallback, load_config_file, watch_etcd, watch_file

__all__: list[str] = [
    "BackendConnectError",
    "BackendError",
    "BackendProtocolError",
    "BackendTimeoutError",
    "ConfigCallback",
    "ConfigProblem",
    "ConfigSourceError",
    "DataPlane",
    "DataPlaneError",
    "DynamicConfig",
    "InvalidConfigError",
    "ProxySettings",
    "Route",
    "RouterSpec",
    "RoutingTable",
    "RuleSyntaxError",
    "ServerSpec",
    "ServiceSpec",
    "SettingsError",
    "config_from_kv",
    "format_rule",
    "load_config_file",
    "parse_dynamic_config",
    "parse_rule",
    "quote_rule_value",
    "watch_etcd",
    "watch_file",
]
