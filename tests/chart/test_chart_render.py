"""The eventproxy chart, rendered by the real ``helm template`` with the default values and with
every option on (``charts/eventproxy/ci/all-options-values.yaml``): what the manifests promise.
"""

from __future__ import annotations

import base64
import re
import ssl
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_support import (
    ALL_OPTIONS,
    CHART,
    HelmFailed,
    Manifest,
    Render,
    admits,
    container_ports,
    containers,
    env_of,
    matches,
    named,
    of_kind,
    pod_labels,
    pod_template,
    selected_workloads,
    workloads,
)

NAMESPACE = "jhub"
HUB = {"component": "hub", "app": "jupyterhub", "release": "jhub"}
SINGLEUSER = {"component": "singleuser-server", "app": "jupyterhub", "release": "jhub"}
STRANGER = {"app": "something-else"}


def fullname(manifests: list[Manifest]) -> str:
    etcd = [w for w in of_kind(manifests, "StatefulSet") if w["metadata"]["name"].endswith("-etcd")]
    assert len(etcd) == 1
    return str(etcd[0]["metadata"]["name"]).removesuffix("-etcd")


def traefik_workload(manifests: list[Manifest]) -> Manifest:
    name = f"{fullname(manifests)}-traefik"
    found = [w for w in workloads(manifests) if w["metadata"]["name"] == name]
    assert len(found) == 1 and found[0]["kind"] in ("Deployment", "StatefulSet")
    return found[0]


def reachable(
    manifests: list[Manifest], target: Manifest, port: int, labels: dict[str, str], namespace: str
) -> bool:
    """Whether the rendered NetworkPolicies let such a pod connect to ``target`` on ``port``."""
    guarding = [
        p
        for p in of_kind(manifests, "NetworkPolicy")
        if matches(p["spec"]["podSelector"].get("matchLabels"), pod_labels(target))
    ]
    if not guarding:
        return True
    return any(
        admits(p, port, target, labels, namespace=namespace, policy_namespace=NAMESPACE)
        for p in guarding
    )


# --- every manifest --------------------------------------------------------------------------


def test_helm_lint_strict(helm: Path) -> None:
    for values in ([], ["--values", str(ALL_OPTIONS)]):
        done = subprocess.run(
            [str(helm), "lint", "--strict", str(CHART), *values],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("version", ["1.32.0", "1.35.0"])
def test_every_manifest_is_valid_kubernetes(
    manifests: list[Manifest], version: str, kubernetes_validate: Any
) -> None:
    assert len(manifests) > 10
    for manifest in manifests:
        kubernetes_validate.validate(manifest, version, True)  # strict: no unknown fields


def test_names_are_unique(manifests: list[Manifest]) -> None:
    keys = Counter((m["kind"], m["metadata"]["name"]) for m in manifests)
    assert [k for k, n in keys.items() if n > 1] == []


def test_names_fit_kubernetes_limits(manifests: list[Manifest]) -> None:
    for m in manifests:
        name = m["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
        # Service names are DNS labels; StatefulSet pod names add "-N" and a revision hash label.
        limit = 63 if m["kind"] != "StatefulSet" else 52
        assert len(name) <= limit, name


def test_workload_selectors_match_their_pod_labels(manifests: list[Manifest]) -> None:
    for w in workloads(manifests):
        if w["kind"] == "Job":
            continue
        selector = w["spec"]["selector"]["matchLabels"]
        assert selector and matches(selector, pod_labels(w)), w["metadata"]["name"]
        # ...and no other workload's pods, so two controllers never fight over a pod.
        assert selected_workloads(manifests, selector) == [f"{w['kind']}/{w['metadata']['name']}"]


def test_services_select_pods_and_their_named_ports(manifests: list[Manifest]) -> None:
    for service in of_kind(manifests, "Service"):
        selector = service["spec"]["selector"]
        targets = [w for w in workloads(manifests) if matches(selector, pod_labels(w))]
        assert len(targets) == 1, service["metadata"]["name"]
        ports = container_ports(targets[0])
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)


def test_statefulsets_name_their_governing_headless_service(manifests: list[Manifest]) -> None:
    for sts in of_kind(manifests, "StatefulSet"):
        service = named(manifests, "Service", sts["spec"]["serviceName"])
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert matches(service["spec"]["selector"], pod_labels(sts))


def test_every_workload_has_a_pdb(manifests: list[Manifest]) -> None:
    pdbs = of_kind(manifests, "PodDisruptionBudget")
    for w in workloads(manifests):
        if w["kind"] == "Job":
            continue
        covering = [p for p in pdbs if matches(p["spec"]["selector"]["matchLabels"], pod_labels(w))]
        assert len(covering) == 1, w["metadata"]["name"]
        spec = covering[0]["spec"]
        if w["metadata"]["name"].endswith("-etcd"):
            assert spec["minAvailable"] >= w["spec"]["replicas"] // 2 + 1  # a majority stays
        else:
            assert spec["maxUnavailable"] < w["spec"]["replicas"]


def test_no_container_runs_as_root(manifests: list[Manifest]) -> None:
    for w in workloads(manifests):
        pod = pod_template(w)["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        for c in containers(w):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"], c["name"]


def test_every_container_has_resources_and_probes(manifests: list[Manifest]) -> None:
    for w in workloads(manifests):
        for c in containers(w):
            requests = c["resources"]["requests"]
            assert requests["cpu"] and requests["memory"], c["name"]
            assert c["resources"]["limits"]["memory"], c["name"]
        if w["kind"] == "Job":
            continue  # runs to completion: the Job's retries are its health check
        # (init containers run to completion before the pod starts: Kubernetes allows no probes)
        for c in pod_template(w)["spec"]["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, (w["metadata"]["name"], c)


# --- etcd ------------------------------------------------------------------------------------


def test_etcd_is_a_quorum_with_volumes_and_a_pdb(default_manifests: list[Manifest]) -> None:
    name = fullname(default_manifests)
    sts = named(default_manifests, "StatefulSet", f"{name}-etcd")
    assert sts["spec"]["replicas"] == 3
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "8Gi"
    args = next(containers(sts))["args"]
    cluster = next(a for a in args if a.startswith("--initial-cluster="))
    members = [f"{name}-etcd-{i}=http://{name}-etcd-{i}.{name}-etcd:2380" for i in range(3)]
    assert cluster == "--initial-cluster=" + ",".join(members)
    assert named(default_manifests, "PodDisruptionBudget", f"{name}-etcd")["spec"] == {
        "minAvailable": 2,
        "selector": sts["spec"]["selector"],
    }


def test_etcd_tls_option(all_options_manifests: list[Manifest]) -> None:
    name = fullname(all_options_manifests)
    sts = named(all_options_manifests, "StatefulSet", f"{name}-etcd")
    args = next(containers(sts))["args"]
    assert "--client-cert-auth=true" in args and "--peer-client-cert-auth=true" in args
    assert "--listen-client-urls=https://0.0.0.0:2379" in args
    volumes = {v["name"]: v for v in pod_template(sts)["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "etcd-server-tls"
    traefik_env = named(all_options_manifests, "ConfigMap", f"{name}-traefik")["data"]
    assert traefik_env["TRAEFIK_PROVIDERS_ETCD_TLS_CERT"] == "/etc/traefik/etcd-tls/tls.crt"
    node = named(all_options_manifests, "StatefulSet", f"{name}-dataplane")
    node_args = next(containers(node))["args"]
    assert any(a.startswith("--log-url=etcds://") for a in node_args)
    assert "--etcd-cert-file=/etc/eventproxy/etcd-tls/tls.crt" in node_args


def test_etcd_auth_secret_holds_every_user(default_manifests: list[Manifest]) -> None:
    name = fullname(default_manifests)
    secret = named(default_manifests, "Secret", f"{name}-etcd-auth")
    passwords = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(passwords) == {"root-password", "eventproxy-password", "reader-password"}
    assert all(len(p) == 32 for p in passwords.values())
    assert len(set(passwords.values())) == 3


def test_secret_and_configmap_references_exist(manifests: list[Manifest]) -> None:
    secrets = {m["metadata"]["name"] for m in of_kind(manifests, "Secret")}
    configmaps = {m["metadata"]["name"] for m in of_kind(manifests, "ConfigMap")}
    # Secrets the all-options values bring themselves:
    secrets |= {
        "my-etcd-users",
        "my-traefik-api",
        "my-traefik-default-tls",
        "etcd-server-tls",
        "etcd-client-tls",
    }
    for w in workloads(manifests):
        spec = pod_template(w)["spec"]
        for volume in spec.get("volumes") or []:
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets, volume
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps, volume
        for c in containers(w):
            for source in c.get("envFrom") or []:
                assert source["configMapRef"]["name"] in configmaps
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] in secrets, env


# --- traefik ---------------------------------------------------------------------------------


def test_traefik_replicas_roll_without_downtime(manifests: list[Manifest]) -> None:
    name = fullname(manifests)
    deployment = traefik_workload(manifests)
    assert deployment["spec"]["replicas"] >= 2
    if deployment["kind"] == "Deployment":
        assert deployment["spec"]["strategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
    else:  # StatefulSet: one replica at a time, each with a stable API address
        assert deployment["spec"]["updateStrategy"] == {"type": "RollingUpdate"}
        assert deployment["spec"]["serviceName"] == f"{name}-traefik-api"
    assert deployment["spec"]["minReadySeconds"] > 0
    anti = pod_template(deployment)["spec"]["affinity"]["podAntiAffinity"]
    (terms,) = anti.values()
    term = terms[0].get("podAffinityTerm", terms[0])
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["labelSelector"]["matchLabels"], pod_labels(deployment))


def test_traefik_reads_etcd_and_waits_for_the_routes(default_manifests: list[Manifest]) -> None:
    name = fullname(default_manifests)
    config = named(default_manifests, "ConfigMap", f"{name}-traefik")["data"]
    members = ",".join(f"{name}-etcd-{i}.{name}-etcd:2379" for i in range(3))
    assert config["TRAEFIK_PROVIDERS_ETCD_ENDPOINTS"] == members
    assert config["TRAEFIK_PROVIDERS_ETCD_USERNAME"] == "reader"
    assert config["TRAEFIK_ENTRYPOINTS_WEB_ASDEFAULT"] == "true"
    assert config["TRAEFIK_API_DASHBOARD"] == "false"
    assert "TRAEFIK_API_INSECURE" not in config  # the API is behind basic auth (api.yaml)
    assert (
        "basicAuth"
        in named(default_manifests, "ConfigMap", f"{name}-traefik-dynamic")["data"]["api.yaml"]
    )
    deployment = named(default_manifests, "Deployment", f"{name}-traefik")
    (container,) = pod_template(deployment)["spec"]["containers"]
    (init,) = pod_template(deployment)["spec"]["initContainers"]
    assert ":{SHA}" in init["command"][-1]  # a random token: no slow hash per API call
    password = env_of(container)["TRAEFIK_PROVIDERS_ETCD_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{name}-etcd-auth", "key": "reader-password"}
    probe = " ".join(container["readinessProbe"]["exec"]["command"])
    assert probe.endswith("/api/http/routers/eventproxy-_applied@etcd")
    assert "127.0.0.1:8082" in probe and config["TRAEFIK_ENTRYPOINTS_PROBE_ADDRESS"] == (
        "127.0.0.1:8082"
    )
    assert container["livenessProbe"]["httpGet"]["path"] == "/ping"


def _default_certificate_files(manifests: list[Manifest]) -> tuple[str, str, str]:
    """The traefik pods' default TLS certificate: (Secret name, certFile, keyFile), checked to
    be the files the dynamic configuration names, in the Secret's volume."""
    name = fullname(manifests)
    dynamic = yaml.safe_load(
        named(manifests, "ConfigMap", f"{name}-traefik-dynamic")["data"]["api.yaml"]
    )
    default = dynamic["tls"]["stores"]["default"]["defaultCertificate"]
    spec = pod_template(traefik_workload(manifests))["spec"]
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "default-cert"]
    assert mount["readOnly"] is True
    assert default == {
        "certFile": f"{mount['mountPath']}/tls.crt",
        "keyFile": f"{mount['mountPath']}/tls.key",
    }
    (volume,) = [v for v in spec["volumes"] if v["name"] == "default-cert"]
    assert volume["secret"]["defaultMode"] == 0o440  # owner root, group the pod's fsGroup
    assert spec["securityContext"]["fsGroup"] == container["securityContext"].get(
        "runAsUser", spec["securityContext"].get("runAsUser")
    )
    return volume["secret"]["secretName"], default["certFile"], default["keyFile"]


def test_traefik_has_a_default_certificate(
    default_manifests: list[Manifest], render: Render, tmp_path: Path
) -> None:
    """Without one, traefik generates an RSA key on every route change (docs/traefik.md): the
    chart makes a self-signed certificate, kept across upgrades, or mounts the user's own."""
    secret_name, _, _ = _default_certificate_files(default_manifests)
    secret = named(default_manifests, "Secret", secret_name)
    assert secret["type"] == "kubernetes.io/tls"
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    key.write_bytes(base64.b64decode(secret["data"]["tls.key"]))
    ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)  # a pair
    # the user's own Secret: mounted, and the chart makes none
    theirs = render(set_values=["traefik.defaultCertificate.existingSecret=site-tls"])
    assert _default_certificate_files(theirs)[0] == "site-tls"
    assert not [s for s in of_kind(theirs, "Secret") if "default-cert" in s["metadata"]["name"]]


def test_config_and_secret_checksums_roll_the_pods(render: Render) -> None:
    def annotations(manifests: list[Manifest], kind: str, suffix: str) -> dict[str, str]:
        w = named(manifests, kind, f"{fullname(manifests)}-{suffix}")
        return dict(pod_template(w)["metadata"]["annotations"])

    base = render()
    again = render()
    log_level = render(set_values=["traefik.logLevel=DEBUG"])
    api_secret = render(set_values=["traefik.api.existingSecret=mine"])
    tls = render(
        set_values=[
            "etcd.tls.enabled=true",
            "etcd.tls.serverSecret=s",
            "etcd.tls.clientSecret=c",
        ]
    )
    t0 = annotations(base, "Deployment", "traefik")
    assert {"checksum/config", "checksum/api-secret", "checksum/etcd-auth"} <= set(t0)
    assert annotations(again, "Deployment", "traefik") == t0  # same values: no rollout
    changed = annotations(log_level, "Deployment", "traefik")
    assert changed["checksum/config"] != t0["checksum/config"]
    assert changed["checksum/api-secret"] == t0["checksum/api-secret"]
    assert (
        annotations(api_secret, "Deployment", "traefik")["checksum/api-secret"]
        != (t0["checksum/api-secret"])
    )
    assert (
        annotations(tls, "StatefulSet", "etcd")["checksum/tls"]
        != (annotations(base, "StatefulSet", "etcd")["checksum/tls"])
    )


# --- NetworkPolicies -------------------------------------------------------------------------


def test_network_policies_admit_the_hub_and_singleuser_pods(manifests: list[Manifest]) -> None:
    name = fullname(manifests)
    all_options = name == "hub-eventproxy"
    # all-options: z2jh in another namespace ("jupyterhub"), matched also by its release label
    namespace = "jupyterhub" if all_options else NAMESPACE
    etcd = named(manifests, "StatefulSet", f"{name}-etcd")
    traefik = traefik_workload(manifests)
    config = named(manifests, "ConfigMap", f"{name}-traefik")["data"]
    api_port = int(config["TRAEFIK_ENTRYPOINTS_TRAEFIK_ADDRESS"].lstrip(":"))
    web_port = int(config["TRAEFIK_ENTRYPOINTS_WEB_ADDRESS"].lstrip(":"))
    traefik_labels = pod_labels(traefik)

    assert reachable(manifests, etcd, 2379, HUB, namespace)
    assert reachable(manifests, etcd, 2379, traefik_labels, NAMESPACE)
    assert not reachable(manifests, etcd, 2379, SINGLEUSER, namespace)
    assert not reachable(manifests, etcd, 2379, STRANGER, NAMESPACE)
    assert not reachable(manifests, etcd, 2380, HUB, namespace)  # peers only
    assert reachable(manifests, etcd, 2380, pod_labels(etcd), NAMESPACE)

    assert reachable(manifests, traefik, api_port, HUB, namespace)
    assert not reachable(manifests, traefik, api_port, SINGLEUSER, namespace)
    assert not reachable(manifests, traefik, api_port, STRANGER, NAMESPACE)
    for who in (HUB, SINGLEUSER):
        assert reachable(manifests, traefik, web_port, who, namespace)
    # the public port: everyone by default; with publicFrom, those peers (an ipBlock here)
    assert reachable(manifests, traefik, web_port, STRANGER, NAMESPACE) is not all_options
    if all_options:
        # the hub of another z2jh release in the same namespace is not this hub
        other_hub = {**HUB, "release": "other"}
        assert not reachable(manifests, traefik, api_port, other_hub, namespace)
        assert not reachable(manifests, traefik, api_port, HUB, NAMESPACE)  # wrong namespace
        node = named(manifests, "StatefulSet", f"{name}-dataplane")
        assert reachable(manifests, node, 9001, HUB, namespace)
        assert not reachable(manifests, node, 9001, SINGLEUSER, namespace)
        assert reachable(manifests, node, 8001, SINGLEUSER, namespace)
        projector = named(manifests, "Deployment", f"{name}-projector")
        assert reachable(manifests, etcd, 2379, pod_labels(projector), NAMESPACE)


def test_proxy_pods_carry_the_labels_z2jh_policies_admit(manifests: list[Manifest]) -> None:
    for w in workloads(manifests):
        if w["metadata"]["name"].endswith(("-traefik", "-dataplane")):
            labels = pod_labels(w)
            assert labels["hub.jupyter.org/network-access-hub"] == "true"
            assert labels["hub.jupyter.org/network-access-singleuser"] == "true"


# --- options ---------------------------------------------------------------------------------


def test_dataplane_nodes_keep_last_known_good_state(render: Render) -> None:
    for state, expect in (("emptyDir", "emptyDir"), ("pvc", "claim")):
        manifests = render(set_values=["dataplane.enabled=true", f"dataplane.state.type={state}"])
        name = fullname(manifests)
        node = named(manifests, "StatefulSet", f"{name}-dataplane")
        (container,) = containers(node)
        assert "--state-dir=/var/lib/eventproxy" in container["args"]
        assert container["args"][0] == "dataplane"
        assert f"--log-url=etcd://{name}-etcd-0.{name}-etcd:2379," in " ".join(container["args"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "state")
        assert mount["mountPath"] == "/var/lib/eventproxy"
        volumes = {v["name"]: v for v in pod_template(node)["spec"].get("volumes") or []}
        claims = [c["metadata"]["name"] for c in node["spec"].get("volumeClaimTemplates") or []]
        if expect == "emptyDir":
            assert "emptyDir" in volumes["state"] and claims == []
        else:
            assert "state" not in volumes and claims == ["state"]


def test_projector_replicas(all_options_manifests: list[Manifest]) -> None:
    name = fullname(all_options_manifests)
    projector = named(all_options_manifests, "Deployment", f"{name}-projector")
    assert projector["spec"]["replicas"] >= 2
    (container,) = containers(projector)
    args = container["args"]
    assert args[0] == "project"
    assert "--root-key=jhub-traefik" in args
    assert "--etcd-username=eventproxy" in args
    assert any(a.startswith("--traefik-etcd=etcds://") for a in args)


# --- values the chart refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["traefik.replicas=1"], "at '/traefik/replicas': minimum: got 1, want 2"),
        (["etcd.replicas=4"], "at '/etcd/replicas': value must be one of 3, 5"),
        (["traefik.bogus=1"], "at '/traefik': additional properties 'bogus' not allowed"),
        (["dataplane.state.type=disk"], "at '/dataplane/state/type'"),
        (["traefik.service.type=External"], "at '/traefik/service/type'"),
        (["etcd.pdb.minAvailable=1"], "at '/etcd/pdb/minAvailable'"),
        (["traefik.webPort=80"], "at '/traefik/webPort': minimum: got 80, want 1,024"),
        (["logPrefix=/bad prefix"], "at '/logPrefix'"),
        (["etcd.extraArgs={oops}"], "at '/etcd/extraArgs/0'"),
        (["traefik.resources.requests=null"], "at '/traefik/resources'"),
        (
            ["etcd.tls.enabled=true"],
            "etcd.tls.enabled needs etcd.tls.serverSecret and etcd.tls.clientSecret",
        ),
        (
            ["traefik.enabled=false"],
            "enable traefik.enabled or dataplane.enabled (or both)",
        ),
        (
            ["traefik.enabled=false", "dataplane.enabled=true", "projector.enabled=true"],
            "projector.enabled writes traefik's keys; it needs traefik.enabled",
        ),
        (
            ["etcd.pdb.minAvailable=4"],
            "etcd.pdb.minAvailable (4) is more than etcd.replicas (3)",
        ),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(
    render: Render, values: list[str], message: str
) -> None:
    with pytest.raises(HelmFailed) as failed:
        render(set_values=values)
    assert message in failed.value.stderr


def test_auth_setup_job_gives_the_script_what_it_reads(manifests: list[Manifest]) -> None:
    name = fullname(manifests)
    job = named(manifests, "Job", f"{name}-etcd-auth-setup")
    (container,) = containers(job)
    script = (CHART / "files" / "etcd_auth_setup.py").read_text()
    read = set(re.findall(r'os\.environ\.get\("([A-Z_]+)"', script))
    env = env_of(container)
    assert {"ETCD_ENDPOINTS", "ETCD_AUTH_DIR"} <= set(env) <= read
    endpoints = env["ETCD_ENDPOINTS"]["value"].split(",")
    sts = named(manifests, "StatefulSet", f"{name}-etcd")
    assert len(endpoints) == sts["spec"]["replicas"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    configmap = named(manifests, "ConfigMap", f"{name}-etcd-auth-setup")
    assert configmap["data"]["etcd_auth_setup.py"].strip() == script.strip()


def test_schema_describes_every_value_and_refuses_unknown_keys() -> None:
    import json

    import yaml

    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> None:
        assert node.get("description"), f"{path}: no description"
        if "properties" in node:  # a fixed set of keys: nothing else is accepted
            assert node["additionalProperties"] is False, path
            assert isinstance(value, dict), path
            assert set(value) <= set(node["properties"]), path
            for key, child in node["properties"].items():
                walk(child, value.get(key), f"{path}.{key}")

    walk(schema, values, "values")
    # every default value is in the schema (helm would refuse it otherwise; checked directly)
    assert set(values) <= set(schema["properties"])
