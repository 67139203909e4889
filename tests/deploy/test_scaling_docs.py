"""docs/scaling.md quotes the manifests' settings; the quotes must be the manifests' values.

The guide cites no measured figure (those come from `make bench`); the numbers it does cite
are settings, read here from the rendered objects so that a change to either shows up.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, KUBERNETES, KUBERNETES_VERSION, REPO, only, render

SCALING = REPO / "docs" / "scaling.md"


def _cpu() -> dict[str, Any]:
    objects = render(KUBERNETES / "overlays" / "cpu")
    return {obj["kind"]: obj for obj in objects}


def _expected_quotes() -> list[str]:
    objects = _cpu()
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config = objects["ConfigMap"]["data"]
    hpa = objects["HorizontalPodAutoscaler"]["spec"]
    startup = container["startupProbe"]
    gpu_pod = only(render(KUBERNETES / "overlays" / "gpu"), "Deployment")["spec"]["template"]
    gpu_startup = gpu_pod["spec"]["containers"][0]["startupProbe"]
    (cpu_metric,) = [m for m in hpa["metrics"] if m["type"] == "Resource"]
    scale_up_periods = {p["periodSeconds"] for p in hpa["behavior"]["scaleUp"]["policies"]}
    (scale_up_period,) = scale_up_periods
    scale_down_window = hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    with (DEPLOY / "kserve" / "inferenceservice.yaml").open() as stream:
        isvc = only([d for d in yaml.safe_load_all(stream) if d], "InferenceService")
    drain = float(config["CNNSERVE_DRAIN_TIMEOUT_S"])
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    return [
        f"Kubernetes {KUBERNETES_VERSION.rsplit('.', 1)[0]} or newer",
        f"Kubernetes {KUBERNETES_VERSION.rsplit('.', 1)[0]} schema",
        f"every {startup['periodSeconds']} s for up to "
        f"{startup['periodSeconds'] * startup['failureThreshold']} s",
        f"({gpu_startup['periodSeconds'] * gpu_startup['failureThreshold']} s on GPU)",
        f"sleeps {pre_stop} s",
        f"`CNNSERVE_DRAIN_TIMEOUT_S` ({drain:g} s)",
        f"`terminationGracePeriodSeconds: {pod['terminationGracePeriodSeconds']}` covers the "
        f"{pre_stop} s sleep, the {drain:g} s drain",
        f"CPU at {cpu_metric['resource']['target']['averageUtilization']} %",
        f"every {scale_up_period} s",
        f"waits {scale_down_window // 60} minutes",
        f"`scaleTarget` ({isvc['spec']['predictor']['scaleTarget']})",
        f"maxSurge: {objects['Deployment']['spec']['strategy']['rollingUpdate']['maxSurge']}",
    ]


@pytest.mark.parametrize("quote", _expected_quotes())
def test_docs_quote_the_manifests(quote: str) -> None:
    text = " ".join(SCALING.read_text().split())
    assert quote in text


def test_docs_name_only_files_that_exist() -> None:
    for path in re.findall(r"`(deploy/[^`\s]+)`", SCALING.read_text()):
        assert (REPO / path).exists(), path
