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
from ._errors import DataPlaneError, InvalidConfigError, RuleSyntaxError
from ._routing import Route, RoutingTable
from ._rules import format_rule, parse_rule

__all__: list[str] = [
    "ConfigProblem",
    "DataPlaneError",
    "DynamicConfig",
    "InvalidConfigError",
    "Route",
    "RouterSpec",
    "RoutingTable",
    "RuleSyntaxError",
    "ServerSpec",
    "ServiceSpec",
    "config_from_kv",
    "format_rule",
    "parse_dynamic_config",
    "parse_rule",
]
