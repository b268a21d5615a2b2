"""The image recipes (charts/images/*/Dockerfile): what they copy exists, they end unprivileged,
and the chart's defaults run what they install. (No image is built here: that needs a
container runtime and the base images' registries.)"""

from __future__ import annotations

import re

import pytest
import yaml
from chart_support import CHART, ROOT

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
