"""Dynamic configuration values and parsers (file-provider documents and traefik's KV layout)."""

from __future__ import annotations

import pytest

from eventproxy_dataplane import (
    ConfigProblem,
    DataPlaneError,
    DynamicConfig,
    InvalidConfigError,
    RouterSpec,
    ServerSpec,
    ServiceSpec,
    config_from_kv,
    parse_dynamic_config,
)

DOC = {
    "http": {
        "routers": {
            "r1": {
                "rule": "PathPrefix(`/a/`)",
                "service": "s1",
                "priority": 7,
                "entryPoints": ["web"],
            },
            "r2": {"rule": "Host(`h`)", "service": "s2@file"},
        },
        "services": {
            "s1": {
                "loadBalancer": {
                    "servers": [
                        {"url": "http://127.0.0.1:8001"},
                        {"url": "https://[::1]:8443/base"},
                    ]
                }
            },
            "s2": {
                "loadBalancer": {
                    "servers": [{"url": "http://localhost:8002"}],
                    "passHostHeader": False,
                }
            },
        },
    }
}


def test_parse_dynamic_config() -> None:
    config, problems = parse_dynamic_config(DOC)
    assert problems == []
    assert config.routers["r1"] == RouterSpec("r1", "PathPrefix(`/a/`)", "s1", 7, ("web",))
    assert config.routers["r2"].service == "s2"  # provider suffix dropped
    assert config.services["s1"].servers[1] == ServerSpec("https://[::1]:8443/base")
    assert config.services["s2"].pass_host_header is False
    assert config.routers["r2"].effective_priority == len("Host(`h`)")


def test_config_is_read_only_and_comparable() -> None:
    config, _ = parse_dynamic_config(DOC)
    with pytest.raises(TypeError):
        config.routers["x"] = config.routers["r1"]  # type: ignore[index]
    again, _ = parse_dynamic_config(DOC)
    assert again == config and hash(again) == hash(config)
    assert DynamicConfig() == DynamicConfig() and DynamicConfig() != config


def test_server_url_without_port_uses_the_schemes_default() -> None:
    assert ServerSpec("http://127.0.0.1").port == 80
    assert ServerSpec("https://example.org/").port == 443
    assert ServerSpec("http://127.0.0.1:8888").port == 8888


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1:21", "scheme must be http or https"),
        ("http://:80", "has no host"),
        ("http://127.0.0.1:99999", "malformed"),
        ("http://127.0.0.1:80/a b", "whitespace"),
        (8080, "must be a string"),
    ],
)
def test_server_url_is_validated(url: object, message: str) -> None:
    with pytest.raises(InvalidConfigError, match=message):
        ServerSpec(url)  # type: ignore[arg-type]
    assert issubclass(InvalidConfigError, DataPlaneError)


def test_spec_constructors_refuse_bad_values() -> None:
    with pytest.raises(InvalidConfigError, match="contains '@'"):
        RouterSpec("a@file", "Host(`a`)", "s")
    with pytest.raises(InvalidConfigError, match="priority must be an int"):
        RouterSpec("a", "Host(`a`)", "s", priority=True)
    with pytest.raises(InvalidConfigError, match="service name must be a non-empty"):
        ServiceSpec("", ())
    with pytest.raises(InvalidConfigError, match="tuple of ServerSpec"):
        ServiceSpec("s", ["http://a:1"])  # type: ignore[arg-type]


def test_bad_entries_become_problems_and_the_rest_loads() -> None:
    config, problems = parse_dynamic_config(
        {
            "http": {
                "routers": {
                    "good": {"rule": "Host(`a`)", "service": "s"},
                    "nosvc": {"rule": "Host(`a`)"},
                    "badprio": {"rule": "Host(`a`)", "service": "s", "priority": "high"},
                    "at@name": {"rule": "Host(`a`)", "service": "s"},
                    "notatable": "Host(`a`)",
                },
                "services": {
                    "s": {"loadBalancer": {"servers": [{"url": "http://127.0.0.1:1"}]}},
                    "weighted": {"weighted": {"services": []}},
                    "badurl": {"loadBalancer": {"servers": [{"url": "gopher://x:1"}]}},
                    "nourl": {"loadBalancer": {"servers": [{"address": "x"}]}},
                    "badphh": {"loadBalancer": {"servers": [], "passHostHeader": "maybe"}},
                },
            }
        }
    )
    assert set(config.routers) == {"good"} and set(config.services) == {"s"}
    assert {p.where for p in problems} == {
        "http.routers.nosvc.service",
        "http.routers.badprio.priority",
        "http.routers.at@name",
        "http.routers.notatable",
        "http.services.weighted",
        "http.services.badurl.loadBalancer.servers[0]",
        "http.services.nourl.loadBalancer.servers[0]",
        "http.services.badphh.loadBalancer.passHostHeader",
    }
    assert all(isinstance(p, ConfigProblem) and p.message for p in problems)
    assert "only loadBalancer services" in str(
        next(p for p in problems if p.where == "http.services.weighted")
    )


@pytest.mark.parametrize("doc", [[], {"http": []}, {"http": {"routers": []}}])
def test_malformed_documents_are_problems(doc: object) -> None:
    config, problems = parse_dynamic_config(doc)  # type: ignore[arg-type]
    assert config == DynamicConfig() and problems


def test_empty_document_is_an_empty_config() -> None:
    assert parse_dynamic_config({}) == (DynamicConfig(), [])
    assert parse_dynamic_config({"http": None, "tcp": {}}) == (DynamicConfig(), [])


def test_config_from_kv_matches_the_document_form() -> None:
    pairs = {
        "traefik/http/routers/r1/rule": "PathPrefix(`/a/`)",
        "traefik/http/routers/r1/service": "s1",
        "traefik/http/routers/r1/priority": "7",
        "traefik/http/routers/r1/entryPoints/0": "web",
        "traefik/http/routers/r2/rule": "Host(`h`)",
        "traefik/http/routers/r2/service": "s2",
        "traefik/http/services/s1/loadBalancer/servers/1/url": "https://[::1]:8443/base",
        "traefik/http/services/s1/loadBalancer/servers/0/url": "http://127.0.0.1:8001",
        "traefik/http/services/s2/loadBalancer/servers/0/url": "http://localhost:8002",
        "traefik/http/services/s2/loadBalancer/passHostHeader": "false",
        "other/http/routers/x/rule": "Host(`x`)",  # outside the prefix: ignored
        "traefikx/http/routers/x/rule": "Host(`x`)",
    }
    config, problems = config_from_kv(pairs)
    assert problems == []
    assert config == parse_dynamic_config(DOC)[0]
    assert config_from_kv(pairs, prefix="/traefik/")[0] == config


def test_config_from_kv_reports_bad_keys() -> None:
    config, problems = config_from_kv(
        {
            "traefik/http/routers/r/rule": "Host(`a`)",
            "traefik/http/routers/r/rule/x": "oops",
            "traefik/http//routers": "x",
            "traefik/http/routers/r/service": "s",
            "traefik/http/services/s/loadBalancer/servers/x/url": "http://a:1",
        }
    )
    wheres = {p.where for p in problems}
    assert "traefik/http/routers/r/rule/x" in wheres
    assert "traefik/http//routers" in wheres
    assert "http.services.s.loadBalancer.servers" in wheres
    assert set(config.routers) == {"r"}
