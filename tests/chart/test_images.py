"""The image recipes (charts/images/*/Dockerfile): what they copy exists, they end unprivileged,
and the chart's defaults run what they install. (No image is built here: that needs a
container runtime and the base images' registries.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from chart_support import (
    CHART,
    OVERLAY,
    ROOT,
    Manifest,
    containers,
    helm_template,
    named,
    workloads,
)

IMAGES = ROOT / "charts" / "images"


def instructions(name: str) -> list[tuple[str, str]]:
    text = (IMAGES / name / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


@pytest.mark.parametrize("name", ["hub", "dataplane"])
def test_copied_sources_exist_and_the_last_user_is_not_root(name: str) -> None:
    steps = instructions(name)
    for op, rest in steps:
        if op == "COPY" and not rest.startswith("--from="):
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"{name}: COPY {source} (build from the repo root)"
    users = [rest for op, rest in steps if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), name
    installs = [rest for op, rest in steps if op == "RUN" and "pip install" in rest]
    assert any("eventproxy" in rest for rest in installs), name


def test_the_dataplane_image_runs_as_the_chart_expects() -> None:
    steps = instructions("dataplane")
    user = [rest for op, rest in steps if op == "USER"][-1]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()
    run_as = re.search(r"runAsUser: (\d+)", helpers)
    assert run_as and user == f"{run_as.group(1)}:{run_as.group(1)}"
    assert ("ENTRYPOINT", '["eventproxy"]') in steps
    assert values["eventproxyImage"]["repository"] == "eventproxy-dataplane"


def test_the_overlay_names_the_hub_image_recipe() -> None:
    overlay = yaml.safe_load((ROOT / "charts" / "z2jh-overlay.yaml").read_text())
    assert overlay["hub"]["image"]["name"] == "eventproxy-hub"
    assert "eventproxy-hub" in (IMAGES / "hub" / "Dockerfile").read_text()


# -- the images the charts reference are the ones the recipes produce -------------------------

RECIPES = {"hub": "eventproxy-hub", "dataplane": "eventproxy-dataplane"}


def source_version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def produced(name: str) -> str:
    """``name:tag`` of the image recipe ``name`` builds: its title label and the eventproxy
    version it checks it installed (the build fails on any other)."""
    steps = instructions(name)
    args = dict(rest.split("=", 1) for op, rest in steps if op == "ARG" and "=" in rest)
    labels = " ".join(rest for op, rest in steps if op == "LABEL")
    title = re.search(r'org\.opencontainers\.image\.title="([^"]+)"', labels)
    version = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)
    assert title and version, f"{name}: no title/version label"
    assert version.group(1) == "${EVENTPROXY_VERSION}", name
    checks = [rest for op, rest in steps if op == "RUN" and 'm.version("eventproxy")' in rest]
    assert checks and checks[-1].rstrip().endswith('= "$EVENTPROXY_VERSION"'), name
    return f"{title.group(1)}:{args['EVENTPROXY_VERSION']}"


def short(image: str) -> str:
    """``registry/path/name:tag`` -> ``name:tag``."""
    return image.rsplit("/", 1)[-1]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_builds_the_version_of_the_sources_under_its_documented_name(
    name: str,
) -> None:
    assert produced(name) == f"{RECIPES[name]}:{source_version()}"
    # the build command in the recipe's header and in docs/kubernetes.md tag it so
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    header = (IMAGES / name / "Dockerfile").read_text()
    for text, where in ((header, "the Dockerfile's header"), (docs, "docs/kubernetes.md")):
        tags = re.findall(rf"-f charts/images/{name}/Dockerfile -t (\S+)", text)
        assert tags and all(short(t) == produced(name) for t in tags), (where, tags)


def _images(manifests: list[Manifest]) -> dict[str, set[str]]:
    """image -> the workloads (kind/name/container) that run it."""
    found: dict[str, set[str]] = {}
    for workload in workloads(manifests):
        for container in containers(workload):
            where = f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}"
            found.setdefault(container["image"], set()).add(where)
    return found


def test_the_chart_runs_the_image_the_dataplane_recipe_produces(
    default_manifests: list[Manifest], all_options_manifests: list[Manifest]
) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == source_version()
    ours = produced("dataplane")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    upstream = {
        f"{values[part]['image']['repository']}:{values[part]['image']['tag']}"
        for part in ("etcd", "traefik")
    }
    for manifests, prefix in ((default_manifests, ""), (all_options_manifests, "registry.")):
        images = _images(manifests)
        eventproxy = {i for i in images if short(i).startswith("eventproxy")}
        # every eventproxy image is the recipe's, under the values' repository
        assert {short(i) for i in eventproxy} == {ours}, images
        assert all(i.startswith(prefix) for i in eventproxy), eventproxy
        # ... and it is what the nodes, the projector, the auth Job and traefik's init run
        users = {w.split("/")[2] for i in eventproxy for w in images[i]}
        if prefix:
            assert {"dataplane", "projector", "api-users"} <= users, users
        # the rest are the upstream images the values name (etcd, traefik), nothing else
        others = {short(i) for i in images if i not in eventproxy}
        assert others == {short(i) for i in upstream}, images


def test_z2jh_with_the_overlay_runs_the_hub_image_the_hub_recipe_produces(
    helm: Path, z2jh: Path
) -> None:
    overlay = yaml.safe_load(OVERLAY.read_text())
    image = overlay["hub"]["image"]
    assert f"{image['name']}:{image['tag']}" == produced("hub")
    manifests = helm_template(helm, z2jh, release="jhub", values=[OVERLAY])
    hub = named(manifests, "Deployment", "hub")
    assert [c["image"] for c in containers(hub)] == [produced("hub")]
