"""The prometheus-adapter rules feed the HPA the metric it scales on.

The adapter's configuration has no published schema: its structure is checked here, and
tied to the HorizontalPodAutoscaler and the PodMonitor that scrapes the pods.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from deploy_support import KUBERNETES, load_yaml_documents, only, render

VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
POD_MONITOR = KUBERNETES / "monitoring" / "podmonitor.yaml"
RULE_FIELDS = {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
# Metrics the service exports (the contract in its metrics module).
SERVICE_METRICS = {"cnnserve_queue_depth", "cnnserve_inflight_requests"}


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    values = yaml.safe_load(VALUES.read_text())
    assert set(values) == {"rules"}
    assert set(values["rules"]) == {"custom"}
    custom: list[dict[str, Any]] = values["rules"]["custom"]
    assert custom
    return custom


def _series_metric(rule: dict[str, Any]) -> str:
    match = re.fullmatch(r"(\w+)\{(.*)\}", rule["seriesQuery"])
    assert match, rule["seriesQuery"]
    return match.group(1)


def test_rule_structure(rules: list[dict[str, Any]]) -> None:
    for rule in rules:
        assert set(rule) <= RULE_FIELDS, set(rule) - RULE_FIELDS
        assert {"seriesQuery", "resources", "name", "metricsQuery"} <= set(rule)
        # Per-pod metrics: the series must name the pod and its namespace.
        assert 'namespace!=""' in rule["seriesQuery"]
        assert 'pod!=""' in rule["seriesQuery"]
        assert rule["resources"] == {
            "overrides": {
                "namespace": {"resource": "namespace"},
                "pod": {"resource": "pod"},
            }
        }
        assert set(rule["name"]) == {"matches", "as"}
        assert re.search(rule["name"]["matches"], _series_metric(rule))
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]


def test_rules_read_metrics_the_service_exports(rules: list[dict[str, Any]]) -> None:
    assert {_series_metric(rule) for rule in rules} == SERVICE_METRICS


def test_queue_depth_is_summed_over_models(rules: list[dict[str, Any]]) -> None:
    (rule,) = [r for r in rules if _series_metric(r) == "cnnserve_queue_depth"]
    assert rule["metricsQuery"].replace(" ", "").startswith("sum(<<.Series>>")
    assert rule["metricsQuery"].replace(" ", "").endswith("by(<<.GroupBy>>)")


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_hpa_pod_metrics_are_served_by_the_adapter(
    rules: list[dict[str, Any]], overlay: str
) -> None:
    hpa = only(render(KUBERNETES / "overlays" / overlay), "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    assert wanted
    assert wanted <= {rule["name"]["as"] for rule in rules}


def test_pod_monitor_scrapes_the_pods() -> None:
    (monitor,) = load_yaml_documents(POD_MONITOR)
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    deployment = only(render(KUBERNETES / "overlays" / "cpu"), "Deployment")
    template = deployment["spec"]["template"]
    labels = template["metadata"]["labels"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert all(labels.get(key) == value for key, value in selector.items())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    port_names = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
    assert endpoint["port"] in port_names
    assert endpoint["path"] == template["metadata"]["annotations"]["prometheus.io/path"]
