"""Traefik-style dynamic configuration as frozen values, and the parsers that produce them.

Theory of operation: this module is pure. It turns a traefik dynamic-configuration document (the
dict a TOML/YAML file provider file decodes to) or traefik's KV layout (``traefik/http/...`` keys,
as stored in etcd) into a :class:`DynamicConfig`. It never raises on bad input: every router or
service it cannot use is left out and described by a :class:`ConfigProblem` naming where it is
and what is wrong -- traefik likewise disables a broken router and keeps the others. Rules are
stored as text here; parsing them is the rule module's job (the routing table reports rule
problems). Only the fields the data plane acts on are read; unknown fields are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from ._errors import InvalidConfigError

__all__ = [
    "ConfigProblem",
    "DynamicConfig",
    "RouterSpec",
    "ServerSpec",
    "ServiceSpec",
    "config_from_kv",
    "parse_dynamic_config",
]


_CONTROL_OR_SPACE = re.compile(r"[\x00-\x20\x7f]")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise InvalidConfigError(f"{kind} name must be a non-empty string, not {name!r}")
    if "@" in name:
        raise InvalidConfigError(f"{kind} name {name!r} contains '@', which traefik reserves")


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One load-balancer server: an ``http``/``https`` URL with a host (and a port, else the
    scheme's default, as traefik does)."""

    url: str

    def __post_init__(self) -> None:
        if not isinstance(self.url, str):
            raise InvalidConfigError(f"server url must be a string, not {self.url!r}")
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise InvalidConfigError(f"server url {self.url!r} is malformed: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise InvalidConfigError(
                f"server url {self.url!r}: scheme must be http or https, not {parts.scheme!r}"
            )
        if not parts.hostname:
            raise InvalidConfigError(f"server url {self.url!r} has no host")
        del port  # parsed above only to validate it
        if _CONTROL_OR_SPACE.search(self.url):
            raise InvalidConfigError(f"server url {self.url!r} contains whitespace or controls")

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (443 if parts.scheme == "https" else 80)


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A load-balancer service: its servers, and whether the client's Host header is kept."""

    name: str
    servers: tuple[ServerSpec, ...]
    pass_host_header: bool = True

    def __post_init__(self) -> None:
        _check_name("service", self.name)
        if not isinstance(self.servers, tuple) or not all(
            isinstance(s, ServerSpec) for s in self.servers
        ):
            raise InvalidConfigError(
                f"service {self.name!r}: servers must be a tuple of ServerSpec"
            )


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """A router: a rule, the service it sends matching requests to, and a priority.

    ``priority=None`` means traefik's default: the length of the rule in bytes. (Traefik also
    treats an explicit ``0`` as "default"; the parsers map 0 to ``None``.)
    """

    name: str
    rule: str
    service: str
    priority: int | None = None
    entry_points: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("router", self.name)
        if not isinstance(self.rule, str):
            raise InvalidConfigError(f"router {self.name!r}: rule must be a string")
        if not isinstance(self.service, str) or not self.service:
            raise InvalidConfigError(f"router {self.name!r}: service must be a non-empty string")
        if self.priority is not None and (
            isinstance(self.priority, bool) or not isinstance(self.priority, int)
        ):
            raise InvalidConfigError(f"router {self.name!r}: priority must be an int or None")

    @property
    def effective_priority(self) -> int:
        """The priority traefik uses: the explicit one, else the rule's length in bytes."""
        if self.priority:
            return self.priority
        return len(self.rule.encode("utf-8", "surrogateescape"))


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    """Routers and services by name; read-only mappings."""

    routers: Mapping[str, RouterSpec] = field(default_factory=lambda: _frozen({}))
    services: Mapping[str, ServiceSpec] = field(default_factory=lambda: _frozen({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "routers", _frozen(self.routers))
        object.__setattr__(self, "services", _frozen(self.services))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DynamicConfig):
            return NotImplemented
        return dict(self.routers) == dict(other.routers) and dict(self.services) == dict(
            other.services
        )

    def __hash__(self) -> int:
        return hash((frozenset(self.routers.items()), frozenset(self.services.items())))


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """What was wrong and where (``http.routers.foo.rule``); the caller logs it."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise InvalidConfigError(f"{where}: expected a boolean, got {value!r}")


def _as_priority(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 10)
        except ValueError:
            raise InvalidConfigError(f"{where}: expected an integer, got {value!r}") from None
    else:
        raise InvalidConfigError(f"{where}: expected an integer, got {value!r}")
    return number or None  # traefik: 0 means "default priority"


def _as_str_list(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidConfigError(f"{where}: expected a list of strings, got {value!r}")


def _service_ref(name: str) -> str:
    """A router's service reference with a provider suffix (``svc@file``) removed."""
    return name.split("@", 1)[0] if "@" in name else name


def _parse_router(name: str, raw: Any) -> RouterSpec:
    where = f"http.routers.{name}"
    if not isinstance(raw, Mapping):
        raise InvalidConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    rule = raw.get("rule")
    if not isinstance(rule, str):
        raise InvalidConfigError(f"{where}.rule: missing or not a string")
    service = raw.get("service")
    if not isinstance(service, str) or not service:
        raise InvalidConfigError(f"{where}.service: missing or not a string")
    priority = _as_priority(raw.get("priority"), f"{where}.priority")
    eps = raw.get("entryPoints", ())
    entry_points = _as_str_list(eps, f"{where}.entryPoints") if eps else ()
    return RouterSpec(
        name=name,
        rule=rule,
        service=_service_ref(service),
        priority=priority,
        entry_points=entry_points,
    )


def _parse_service(name: str, raw: Any) -> ServiceSpec:
    where = f"http.services.{name}"
    if not isinstance(raw, Mapping):
        raise InvalidConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    lb = raw.get("loadBalancer")
    if lb is None:
        kinds = sorted(k for k in raw if isinstance(k, str))
        raise InvalidConfigError(
            f"{where}: only loadBalancer services are supported, got {kinds or 'nothing'}"
        )
    if not isinstance(lb, Mapping):
        raise InvalidConfigError(f"{where}.loadBalancer: expected a table")
    raw_servers = lb.get("servers", [])
    if isinstance(raw_servers, Mapping):  # KV layout: {"0": {...}, "1": {...}}
        try:
            raw_servers = [raw_servers[k] for k in sorted(raw_servers, key=lambda k: int(k))]
        except ValueError:
            raise InvalidConfigError(f"{where}.loadBalancer.servers: bad index") from None
    if not isinstance(raw_servers, list):
        raise InvalidConfigError(f"{where}.loadBalancer.servers: expected a list")
    servers = []
    for i, s in enumerate(raw_servers):
        if not isinstance(s, Mapping) or "url" not in s:
            raise InvalidConfigError(f"{where}.loadBalancer.servers[{i}]: missing url")
        try:
            servers.append(ServerSpec(s["url"]))
        except InvalidConfigError as exc:
            raise InvalidConfigError(f"{where}.loadBalancer.servers[{i}]: {exc}") from None
    phh = lb.get("passHostHeader", True)
    return ServiceSpec(
        name=name,
        servers=tuple(servers),
        pass_host_header=_as_bool(phh, f"{where}.loadBalancer.passHostHeader"),
    )


def _problem_from(exc: InvalidConfigError, default_where: str) -> ConfigProblem:
    text = str(exc)
    head, sep, rest = text.partition(": ")
    if sep and head.startswith("http."):
        return ConfigProblem(where=head, message=rest)
    return ConfigProblem(where=default_where, message=text)


def parse_dynamic_config(doc: Mapping[str, Any]) -> tuple[DynamicConfig, list[ConfigProblem]]:
    """Read the ``http`` routers and services of a traefik dynamic config document.

    Never raises for bad content: unusable entries are dropped and reported as problems.
    Routers naming a service that does not exist are kept here; the routing table disables them
    (it is also what sees services arrive later through incremental updates).
    """
    problems: list[ConfigProblem] = []
    routers: dict[str, RouterSpec] = {}
    services: dict[str, ServiceSpec] = {}
    if not isinstance(doc, Mapping):
        return DynamicConfig(), [ConfigProblem("<document>", "expected a table at the top")]
    http = doc.get("http")
    http = {} if http is None else http
    if not isinstance(http, Mapping):
        return DynamicConfig(), [ConfigProblem("http", "expected a table")]
    for section, parse, target in (
        ("routers", _parse_router, routers),
        ("services", _parse_service, services),
    ):
        raw_section = http.get(section)
        raw_section = {} if raw_section is None else raw_section
        if not isinstance(raw_section, Mapping):
            problems.append(ConfigProblem(f"http.{section}", "expected a table"))
            continue
        for name, raw in raw_section.items():
            where = f"http.{section}.{name}"
            try:
                if not isinstance(name, str):
                    raise InvalidConfigError(f"name must be a string, not {name!r}")
                spec = parse(name, raw)
            except InvalidConfigError as exc:
                problems.append(_problem_from(exc, where))
                continue
            target[name] = spec  # type: ignore[assignment]
    return DynamicConfig(routers=routers, services=services), problems


def _kv_tree(
    pairs: Mapping[str, str], prefix: str, problems: list[ConfigProblem]
) -> dict[str, Any]:
    root: dict[str, Any] = {}
    lead = prefix.strip("/") + "/"
    for key in sorted(pairs):
        if not key.startswith(lead):
            continue
        parts = key[len(lead) :].split("/")
        if not all(parts):
            problems.append(ConfigProblem(key, "empty path element in key"))
            continue
        node = root
        ok = True
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(ConfigProblem(key, "key is both a value and a directory"))
                ok = False
                break
            node = child
        if not ok:
            continue
        if isinstance(node.get(parts[-1]), dict):
            problems.append(ConfigProblem(key, "key is both a value and a directory"))
            continue
        node[parts[-1]] = pairs[key]
    return root


def config_from_kv(
    pairs: Mapping[str, str],
    prefix: str = "traefik",
) -> tuple[DynamicConfig, list[ConfigProblem]]:
    """Read traefik's KV layout (``<prefix>/http/routers/<name>/rule`` ...) into a config.

    Lists are stored as numbered keys (``.../servers/0/url``, ``.../entryPoints/0``).
    """
    problems: list[ConfigProblem] = []
    tree = _kv_tree(pairs, prefix, problems)
    http = tree.get("http", {})
    routers = http.get("routers", {}) if isinstance(http, dict) else {}
    if isinstance(routers, dict):
        for raw in routers.values():
            eps = raw.get("entryPoints") if isinstance(raw, dict) else None
            if isinstance(eps, dict):
                raw["entryPoints"] = [eps[k] for k in sorted(eps, key=_index_key)]
    config, more = parse_dynamic_config(tree)
    return config, problems + more


def _index_key(k: str) -> tuple[int, str]:
    return (int(k), k) if k.isdigit() else (1 << 62, k)
