"""Rendering charts with the real ``helm template``, and reading the manifests it renders.

``admits`` answers "does this NetworkPolicy let a pod with these labels (in this namespace)
connect to this port of the pods it guards" for the subset of the NetworkPolicy API the charts
use (podSelector matchLabels, namespaceSelector on kubernetes.io/metadata.name, ipBlock, named
and numbered ports).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "eventproxy"
ALL_OPTIONS = CHART / "ci" / "all-options-values.yaml"
OVERLAY = ROOT / "charts" / "z2jh-overlay.yaml"

Manifest = dict[str, Any]
Render = Callable[..., list[Manifest]]


def z2jh_chart() -> Path:
    shared = Path(os.environ.get("EVENTPROXY_SHARED_DIR") or ROOT.parent / "shared")
    return shared / "vendor" / "zero-to-jupyterhub" / "jupyterhub"


class HelmFailed(Exception):
    def __init__(self, stderr: str) -> None:
        super().__init__(stderr)
        self.stderr = stderr


def helm_template(
    helm: Path,
    chart: Path,
    *,
    release: str = "eventproxy",
    values: Sequence[Path] = (),
    set_values: Sequence[str] = (),
    namespace: str = "jhub",
) -> list[Manifest]:
    """``helm template`` → the rendered manifests (hooks included); HelmFailed on an error."""
    argv = [str(helm), "template", release, str(chart), "--namespace", namespace]
    for path in values:
        argv += ["--values", str(path)]
    for item in set_values:
        argv += ["--set", item]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise HelmFailed(done.stderr)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def named(manifests: list[Manifest], kind: str, name: str) -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def pod_template(workload: Manifest) -> Manifest:
    template: Manifest = workload["spec"]["template"]
    return template


def pod_labels(workload: Manifest) -> dict[str, str]:
    return dict(pod_template(workload)["metadata"].get("labels") or {})


def containers(workload: Manifest) -> Iterator[Manifest]:
    spec = pod_template(workload)["spec"]
    yield from spec.get("initContainers") or []
    yield from spec["containers"]


def matches(match_labels: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A label selector's matchLabels against a pod's labels (empty selects everything)."""
    return all(labels.get(k) == v for k, v in (match_labels or {}).items())


def selected_workloads(manifests: list[Manifest], match_labels: Mapping[str, str]) -> list[str]:
    return [
        f"{w['kind']}/{w['metadata']['name']}"
        for w in workloads(manifests)
        if matches(match_labels, pod_labels(w))
    ]


def container_ports(workload: Manifest) -> dict[str | int, int]:
    """Each container port by name and by number → its number."""
    ports: dict[str | int, int] = {}
    for container in containers(workload):
        for port in container.get("ports") or []:
            ports[port["containerPort"]] = port["containerPort"]
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return ports


def _peer_admits(peer: Manifest, labels: Mapping[str, str], namespace: str, own: str) -> bool:
    if "ipBlock" in peer:
        return False  # a pod is admitted by selectors here, not by its address
    pods = peer.get("podSelector")
    namespaces = peer.get("namespaceSelector")
    if namespaces is None:
        in_namespace = namespace == own
    else:
        wanted = (namespaces.get("matchLabels") or {}).get("kubernetes.io/metadata.name")
        in_namespace = wanted is None or wanted == namespace
    return in_namespace and (pods is None or matches(pods.get("matchLabels"), labels))


def admits(
    policy: Manifest,
    port: int,
    target: Manifest,
    labels: Mapping[str, str],
    *,
    namespace: str,
    policy_namespace: str,
) -> bool:
    """Whether ``policy`` (guarding ``target``'s pods) admits a pod with ``labels`` in
    ``namespace`` to ``port`` (a container port number of ``target``)."""
    numbers = container_ports(target)
    for rule in policy["spec"].get("ingress") or []:
        rule_ports = rule.get("ports")
        if rule_ports is not None and not any(
            numbers.get(p.get("port")) == port for p in rule_ports
        ):
            continue
        peers = rule.get("from")
        if peers is None or peers == []:
            return True  # no "from": every source
        if any(_peer_admits(p, labels, namespace, policy_namespace) for p in peers):
            return True
    return False


def env_of(container: Manifest) -> dict[str, Manifest]:
    return {e["name"]: e for e in container.get("env") or []}
