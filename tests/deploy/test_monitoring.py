"""The dashboard and the alert rules under deploy/monitoring/, and their Kubernetes forms.

promtool (Debian's `prometheus` package, installed by `make apt-deps` through
mk/monitoring.mk) checks the rules and runs their unit tests; every PromQL query of the
dashboard and the rules is parsed (promql-parser) and must name only metrics, and labels, that
a live `cnnserve serve` exports once it has served every kind of request.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import promql_parser
import pytest
import yaml
from deploy_support import KUSTOMIZE_2_FIELDS, load_yaml_documents, only, render
from monitoring_support import (
    DASHBOARD,
    GRAFANA_DIR,
    KUBERNETES_MONITORING,
    PROMETHEUS_CONFIG,
    PROMETHEUS_RULE,
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_queries,
    panels,
    prometheus_rule_text,
    rule_queries,
    substitute_variables,
)
from prometheus_client.parser import text_string_to_metric_families
from testkit import LiveServer, launch_server, png

from model_export.datasets import Split

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
ROWS = ["Traffic", "Pipeline", "Models", "Explanations", "Trust"]
SEVERITIES = {"critical", "warning"}
ANNOTATIONS = {"summary", "description", "action"}
# Series Prometheus makes itself, and the labels its scrape configs attach to every series.
PROMETHEUS_SERIES = {"up"}
TARGET_LABELS = {"job", "instance", "namespace", "pod"}


@dataclass
class Exported:
    """What a live server's /metrics holds: each sample name's family and label names."""

    family: dict[str, str] = field(default_factory=dict)
    labels: dict[str, set[str]] = field(default_factory=dict)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: `make apt-deps` installs Debian's prometheus package "
            "(mk/monitoring.mk), or point PROMTOOL at one"
        )
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=120, check=False
    )


def _rule_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text())["groups"]
    return groups


def _alerts() -> list[dict[str, Any]]:
    return [rule for group in _rule_groups() for rule in group["rules"] if "alert" in rule]


def _selectors(expr: str) -> Iterator[promql_parser.VectorSelector]:
    found: list[promql_parser.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    yield from found


def _metric_name(selector: promql_parser.VectorSelector) -> str:
    if selector.name:
        return str(selector.name)
    names = [m.value for m in selector.matchers.matchers if m.name == "__name__"]
    assert len(names) == 1 and names[0].isidentifier(), f"no plain metric name: {selector}"
    return str(names[0])


def _matchers(selector: promql_parser.VectorSelector) -> list[promql_parser.Matcher]:
    matchers = list(selector.matchers.matchers)
    for alternative in selector.matchers.or_matchers:
        matchers += alternative
    return [m for m in matchers if m.name != "__name__"]


# -- the alert rules --------------------------------------------------------------------


def test_promtool_checks_the_rules() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_compose_config_and_the_rules_it_loads() -> None:
    result = _promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    # A rule_files glob that matches nothing is no error: make sure it found the file.
    assert f"Checking {RULES}" in result.stdout, result.stdout


def test_promtool_unit_tests_pass() -> None:
    result = _promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in _alerts():
        name = alert["alert"]
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name} is never shown firing"
        assert any(not case["exp_alerts"] for case in mine), f"{name} is never shown quiet"


def test_every_alert_waits_has_a_severity_and_says_what_to_do() -> None:
    alerts = _alerts()
    assert len({a["alert"] for a in alerts}) == len(alerts)
    for alert in alerts:
        name = alert["alert"]
        assert alert.get("for"), f"{name} fires on one evaluation"
        assert alert["labels"]["severity"] in SEVERITIES, name
        assert set(alert["annotations"]) == ANNOTATIONS, name


def test_prometheus_rule_is_generated_from_the_rule_file() -> None:
    assert PROMETHEUS_RULE.read_text() == prometheus_rule_text(), (
        "deploy/kubernetes/monitoring/prometheusrule.yaml is stale: run `make prometheus-rule`"
    )
    (manifest,) = load_yaml_documents(PROMETHEUS_RULE)
    assert (manifest["apiVersion"], manifest["kind"]) == (
        "monitoring.coreos.com/v1",
        "PrometheusRule",
    )
    assert manifest["spec"] == {"groups": _rule_groups()}
    for group in manifest["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}


# -- the dashboard -------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"] == "cnnserve" and board["title"]
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == ROWS
    everything = board["panels"] + [c for p in board["panels"] for c in p.get("panels", [])]
    ids = [panel["id"] for panel in everything]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        title = panel.get("title")
        assert title and panel.get("description"), f"panel {panel['id']}: title, description"
        assert panel["datasource"] == DATASOURCE, title
        assert panel["targets"], title
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), title
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, title
            assert target["expr"].strip(), title
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"


def test_dashboard_panels_tile_the_grid() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard()["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"] == DATASOURCE
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".*"
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            used = {name for name in variables if f"${name}" in target["expr"]}
            assert used <= set(variables), panel["title"]


def test_every_query_is_valid_promql_for_prometheus_itself(tmp_path: Path) -> None:
    """promql-parser reads them below; Prometheus's own parser (promtool) reads them too."""
    queries = [q for _, q in dashboard_queries()]
    rules = {"groups": [{"name": "dashboard", "rules": []}]}
    for number, query in enumerate(queries):
        rules["groups"][0]["rules"].append({"record": f"dashboard:query_{number}", "expr": query})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_model_variable_filters_every_metric_with_a_model_label(live: Exported) -> None:
    for panel in panels(dashboard()):
        for target in panel["targets"]:
            expr = target["expr"].replace("$model", "MODEL").replace("${model}", "MODEL")
            for selector in _selectors(substitute_variables(expr)):
                if "model" not in live.labels.get(_metric_name(selector), set()):
                    continue
                assert any(
                    m.name == "model" and m.op == promql_parser.MatchOp.Re and m.value == "MODEL"
                    for m in _matchers(selector)
                ), f"{panel['title']}: {selector} ignores the model variable"


# -- against a live server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = launch_server(tmp_path_factory.mktemp("monitoring"))
    yield server
    server.stop()


def _every_kind_of_request(server: LiveServer, fashion: Split, photos: dict[str, bytes]) -> None:
    """Classify (clothes, a photo, noise that gets flagged), feature maps, both explanation
    methods (a cache miss, then a hit), /v2 infer and an error: every family then exists."""
    rng = np.random.default_rng(0)
    clothes = [png(image) for image in fashion.images[:8]]
    noise = [png(rng.integers(0, 256, (28, 28), dtype=np.uint8)) for _ in range(8)]
    raw = {"Content-Type": "application/octet-stream"}
    with httpx.Client(base_url=f"{server.url}/v1/models", timeout=60) as http:

        def post(path: str, image: bytes | None = None, **kwargs: Any) -> httpx.Response:
            response = http.post(path, content=image, headers=raw if image else None, **kwargs)
            assert response.status_code == 200, f"{path}: {response.text[:300]}"
            return response

        for images in (clothes, noise):
            files = [("file", (f"{i}.png", image, "image/png")) for i, image in enumerate(images)]
            post("lenet5-fashion/classify", files=files)
        post("mobilenetv2-imagenet/classify", photos["chelsea"])
        post("lenet5-fashion/feature-maps?layer=conv1", clothes[0])
        post("lenet5-fashion/explain?method=occlusion", clothes[1])
        post("lenet5-fashion/explain?method=occlusion", clothes[1])  # the cache answers
        post("resnet-fashion/explain?method=cam", clothes[2])
        spec = http.get("lenet5-fashion").json()["input"]
        tensor = (fashion.images[3] / 255.0 - spec["mean"][0]) / spec["std"][0]
        inputs = [
            {
                "name": spec["name"],
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": tensor.astype(np.float32).ravel().tolist(),
            }
        ]
        post(f"{server.url}/v2/models/lenet5-fashion/infer", json={"inputs": inputs})
        assert (
            http.post("no-such-model/classify", content=clothes[0], headers=raw).status_code == 404
        )


@pytest.fixture(scope="module")
def live(live_server: LiveServer, fashion_test: Split, photos: dict[str, bytes]) -> Exported:
    """The live server's /metrics after every kind of request."""
    _every_kind_of_request(live_server, fashion_test, photos)
    text = httpx.get(f"{live_server.url}/metrics", timeout=30).text
    exported = Exported()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            exported.family[sample.name] = family.name
            exported.labels.setdefault(sample.name, set()).update(sample.labels)
    return exported


def test_the_traffic_made_every_family_and_label(live: Exported) -> None:
    for name in (
        "cnnserve_ood_flagged_images_total",
        "cnnserve_explanation_duration_seconds_bucket",
        "cnnserve_occluded_images_total",
    ):
        assert name in live.labels, name
    assert "stage" in live.labels["cnnserve_stage_duration_seconds_bucket"]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_queries_name_only_what_the_service_exports(source: str, live: Exported) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_queries(_rule_groups())
    problems = []
    for where, query in queries:
        for selector in _selectors(query):
            name = _metric_name(selector)
            if name in PROMETHEUS_SERIES:
                continue
            if name not in live.labels:
                problems.append(f"{where}: {name} is not exported")
                continue
            for matcher in _matchers(selector):
                if matcher.name not in live.labels[name] | TARGET_LABELS:
                    problems.append(f"{where}: {name} has no label {matcher.name!r}")
    assert not problems, "\n".join(problems)


def test_the_dashboard_shows_every_family_the_service_exports(live: Exported) -> None:
    shown = {
        live.family.get(_metric_name(selector))
        for _, query in dashboard_queries()
        for selector in _selectors(query)
    }
    # prometheus_client's text format adds a `_created` gauge (a start time) per family.
    families = {name for name in live.family.values() if not name.endswith("_created")}
    missing = families - shown
    assert not missing, f"not on the dashboard: {sorted(missing)}"


# -- Kubernetes and Grafana -------------------------------------------------------------------


def test_kubernetes_monitoring_renders_the_dashboard_rules_and_pod_monitor() -> None:
    objects = render(KUBERNETES_MONITORING)
    assert sorted(obj["kind"] for obj in objects) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    config_map = only(objects, "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {DASHBOARD.name: DASHBOARD.read_text()}
    # Under the 256 KiB kubectl apply keeps in its last-applied annotation.
    assert len(DASHBOARD.read_bytes()) < 200_000
    assert only(objects, "PrometheusRule")["spec"] == {"groups": _rule_groups()}


def test_grafana_kustomization_renders_with_old_kustomize_too() -> None:
    kustomization = yaml.safe_load((GRAFANA_DIR / "kustomization.yaml").read_text())
    assert set(kustomization) <= KUSTOMIZE_2_FIELDS


def test_grafana_provisioning_points_at_the_dashboards() -> None:
    (datasource,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert datasource["jsonData"]["timeInterval"] == config["global"]["scrape_interval"]
    (provider,) = yaml.safe_load(
        (GRAFANA_DIR / "provisioning" / "dashboards" / "cnnserve.yml").read_text()
    )["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
