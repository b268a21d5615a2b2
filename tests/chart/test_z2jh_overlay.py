"""The unmodified Zero to JupyterHub chart rendered with ``charts/z2jh-overlay.yaml`` through the
real ``helm template`` (z2jh's values schema checks the overlay), beside our chart rendered
with its defaults as release "eventproxy" in the same namespace: the hub selects eventproxy
with the etcd log, and every name, Secret key, port and label the overlay relies on is one our
chart renders.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from chart_support import (
    OVERLAY,
    HelmFailed,
    Manifest,
    admits,
    containers,
    env_of,
    helm_template,
    matches,
    named,
    of_kind,
    pod_labels,
)

NAMESPACE = "jhub"


@pytest.fixture(scope="module")
def z2jh_manifests(helm: Path, z2jh: Path) -> list[Manifest]:
    return helm_template(helm, z2jh, release="jhub", values=[OVERLAY], namespace=NAMESPACE)


@pytest.fixture(scope="module")
def ours(default_manifests: list[Manifest]) -> list[Manifest]:
    return default_manifests


def hub_values(z2jh_manifests: list[Manifest]) -> dict[str, Any]:
    """What the hub's jupyterhub_config.py reads: values.yaml in the hub Secret."""
    secret = named(z2jh_manifests, "Secret", "hub")
    loaded: dict[str, Any] = yaml.safe_load(base64.b64decode(secret["data"]["values.yaml"]))
    return loaded


def hub_container(z2jh_manifests: list[Manifest]) -> Manifest:
    deployment = named(z2jh_manifests, "Deployment", "hub")
    return next(c for c in containers(deployment) if c["name"] == "hub")


def test_the_hub_selects_eventproxy_with_the_etcd_log(
    z2jh_manifests: list[Manifest], ours: list[Manifest]
) -> None:
    config = hub_values(z2jh_manifests)["hub"]["config"]
    assert config["JupyterHub"]["proxy_class"] == "eventproxy"
    proxy = config["EventProxy"]
    log_url = urlsplit(proxy["log_url"])
    assert log_url.scheme == "etcd"
    # the members our chart renders, each by its own name, and the chart's log prefix
    traefik_config = named(ours, "ConfigMap", "eventproxy-traefik")["data"]
    assert log_url.netloc == traefik_config["TRAEFIK_PROVIDERS_ETCD_ENDPOINTS"]
    assert log_url.path == "/eventproxy"
    assert "@" not in log_url.netloc  # no credentials in the URL
    etcd = named(ours, "StatefulSet", "eventproxy-etcd")
    members = [
        f"{etcd['metadata']['name']}-{i}.{etcd['spec']['serviceName']}:2379"
        for i in range(etcd["spec"]["replicas"])
    ]
    assert log_url.netloc.split(",") == members
    assert proxy["data_plane"] == "traefik"
    assert proxy["should_start"] is False


def test_the_hub_confirms_on_our_traefik_api(
    z2jh_manifests: list[Manifest], ours: list[Manifest]
) -> None:
    proxy = hub_values(z2jh_manifests)["hub"]["config"]["EventProxy"]
    (api_url,) = proxy["traefik_api_urls"]
    url = urlsplit(api_url)
    service = named(ours, "Service", url.hostname or "")
    assert service["spec"]["clusterIP"] == "None"  # each replica's address
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port]
    api_secret = named(ours, "Secret", "eventproxy-traefik-api")
    username = base64.b64decode(api_secret["data"]["username"]).decode()
    assert proxy["traefik_api_username"] == username
    # the password comes from that Secret through the environment, never from values
    env = env_of(hub_container(z2jh_manifests))
    ref = env["EVENTPROXY_TRAEFIK_API_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "eventproxy-traefik-api", "key": "password"}
    assert "password" in api_secret["data"]
    extra = hub_values(z2jh_manifests)["hub"]["extraConfig"]
    assert any("EVENTPROXY_TRAEFIK_API_PASSWORD" in code for code in extra.values())


def test_etcd_credentials_come_from_our_secret(
    z2jh_manifests: list[Manifest], ours: list[Manifest]
) -> None:
    env = env_of(hub_container(z2jh_manifests))
    assert env["EVENTPROXY_ETCD_USERNAME"]["value"] == "eventproxy"
    ref = env["EVENTPROXY_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = named(ours, "Secret", ref["name"])
    assert ref["key"] in secret["data"]
    assert ref["key"] == "eventproxy-password"  # the read-write user the auth Job creates


def test_configurable_http_proxy_is_made_internal(z2jh_manifests: list[Manifest]) -> None:
    public = named(z2jh_manifests, "Service", "proxy-public")
    assert public["spec"].get("type", "ClusterIP") == "ClusterIP"
    # ...and nothing else of z2jh's is public: ours is the only LoadBalancer
    for service in of_kind(z2jh_manifests, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    chp = named(z2jh_manifests, "Deployment", "proxy")
    assert chp["spec"]["replicas"] == 1  # still there: this z2jh version cannot switch it off


def test_the_hub_image_is_ours(z2jh_manifests: list[Manifest]) -> None:
    assert hub_container(z2jh_manifests)["image"].startswith("eventproxy-hub:")


def test_our_policies_admit_the_rendered_hub_pod(
    z2jh_manifests: list[Manifest], ours: list[Manifest]
) -> None:
    hub_labels = pod_labels(named(z2jh_manifests, "Deployment", "hub"))
    etcd = named(ours, "StatefulSet", "eventproxy-etcd")
    traefik = named(ours, "Deployment", "eventproxy-traefik")
    policies = of_kind(ours, "NetworkPolicy")

    def admitted(target: Manifest, port: int, labels: dict[str, str]) -> bool:
        guarding = [
            p
            for p in policies
            if matches(p["spec"]["podSelector"]["matchLabels"], pod_labels(target))
        ]
        assert guarding
        return any(
            admits(p, port, target, labels, namespace=NAMESPACE, policy_namespace=NAMESPACE)
            for p in guarding
        )

    assert admitted(etcd, 2379, hub_labels)
    assert admitted(traefik, 8080, hub_labels)
    # z2jh's singleuser pods (labels from its own singleuser NetworkPolicy's podSelector)
    singleuser = named(z2jh_manifests, "NetworkPolicy", "singleuser")
    singleuser_labels = singleuser["spec"]["podSelector"]["matchLabels"]
    assert admitted(traefik, 8000, singleuser_labels)
    assert not admitted(traefik, 8080, singleuser_labels)
    assert not admitted(etcd, 2379, singleuser_labels)


def test_z2jh_policies_admit_our_proxy_pods(
    z2jh_manifests: list[Manifest], ours: list[Manifest]
) -> None:
    traefik = named(ours, "Deployment", "eventproxy-traefik")
    labels = pod_labels(traefik)
    hub = named(z2jh_manifests, "Deployment", "hub")
    notebook = {"name": "notebook", "ports": [{"name": "notebook-port", "containerPort": 8888}]}
    singleuser_pod = {"spec": {"template": {"metadata": {}, "spec": {"containers": [notebook]}}}}
    hub_policy = named(z2jh_manifests, "NetworkPolicy", "hub")
    singleuser_policy = named(z2jh_manifests, "NetworkPolicy", "singleuser")
    where = {"namespace": NAMESPACE, "policy_namespace": NAMESPACE}
    assert admits(hub_policy, 8081, hub, labels, **where)
    assert admits(singleuser_policy, 8888, singleuser_pod, labels, **where)
    # and the hub's egress names our etcd and traefik API (kept if privateIPs egress is off)
    etcd_labels = pod_labels(named(ours, "StatefulSet", "eventproxy-etcd"))
    for target_labels, port in ((etcd_labels, 2379), (labels, 8080)):
        assert any(
            egress_admits(rule, target_labels, port) for rule in hub_policy["spec"]["egress"]
        ), (target_labels, port)


def egress_admits(rule: Manifest, labels: dict[str, str], port: int) -> bool:
    peers = [p for p in rule.get("to", []) if "podSelector" in p]
    return any(matches(p["podSelector"]["matchLabels"], labels) for p in peers) and port in [
        p["port"] for p in rule.get("ports", [])
    ]


def test_z2jh_schema_checks_the_overlay(helm: Path, z2jh: Path, tmp_path: Path) -> None:
    """The schema is really in force: the overlay with one misspelt key is refused."""
    overlay = yaml.safe_load(OVERLAY.read_text())
    overlay["hub"]["extraEnvironment"] = overlay["hub"].pop("extraEnv")
    bad = tmp_path / "bad-overlay.yaml"
    bad.write_text(yaml.safe_dump(overlay))
    with pytest.raises(HelmFailed) as failed:
        helm_template(helm, z2jh, release="jhub", values=[bad], namespace=NAMESPACE)
    assert "extraEnvironment" in failed.value.stderr
