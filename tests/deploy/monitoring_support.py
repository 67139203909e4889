"""The monitoring files under deploy/: their paths, the PromQL they hold, and the
PrometheusRule manifest generated from the rule file (one source of truth for the rules).

    python tests/deploy/monitoring_support.py   rewrites it (`make prometheus-rule`)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

from deploy_support import DEPLOY, KUBERNETES, REPO

MONITORING = DEPLOY / "monitoring"
PROMETHEUS_DIR = MONITORING / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules" / "cnnserve.yml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "cnnserve.test.yml"
GRAFANA_DIR = MONITORING / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboards" / "cnnserve.json"
KUBERNETES_MONITORING = KUBERNETES / "monitoring"
PROMETHEUS_RULE = KUBERNETES_MONITORING / "prometheusrule.yaml"

# What Grafana substitutes into a query before Prometheus sees it; the values stand for any
# choice a user can make (a regex that matches every value of a label, a range).
_RANGES = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")

_PROMETHEUS_RULE_HEADER = f"""\
# GENERATED from {RULES.relative_to(REPO)} by `make prometheus-rule`:
# edit that file, not this one (tests/deploy/test_monitoring.py fails when they differ).
# For the Prometheus operator (kube-prometheus-stack), applied with the PodMonitor and the
# dashboard: kubectl apply -n <namespace> -k deploy/kubernetes/monitoring
# Your Prometheus must select it: kube-prometheus-stack's ruleSelector wants its release
# label (add `release: <your release>` below) unless ruleSelectorNilUsesHelmValues is false.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: cnnserve
  labels:
    app.kubernetes.io/name: cnnserve
    app.kubernetes.io/component: inference-server
spec:
"""


def prometheus_rule_text() -> str:
    """The PrometheusRule manifest: the rule file's groups, comments and all, under `spec`."""
    text = RULES.read_text()
    groups = text[text.index("\ngroups:") + 1 :]
    indented = "".join(f"  {line}" if line.strip() else line for line in groups.splitlines(True))
    return _PROMETHEUS_RULE_HEADER + indented


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel but the rows, including those inside collapsed rows."""
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def substitute_variables(expr: str) -> str:
    """A dashboard query as Prometheus would receive it: ranges for the interval variables,
    a match-everything regex for the others (every one sits inside a `=~` matcher)."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return _RANGES.get(name, ".*")

    return _VARIABLE.sub(value, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every query of the dashboard, variables substituted."""
    board = dashboard()
    queries = []
    for panel in panels(board):
        for target in panel.get("targets", []):
            where = f"panel {panel['title']!r} target {target['refId']}"
            queries.append((where, substitute_variables(target["expr"])))
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(metric, label): the metric is what must exist.
            match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query["query"])
            assert match, f"variable {variable['name']}: {query['query']}"
            queries.append((f"variable {variable['name']}", match.group(1)))
    return queries


def rule_queries(groups: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, PromQL) of every rule."""
    return [
        (f"rule {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in groups
        for rule in group["rules"]
    ]


def write_prometheus_rule() -> None:
    PROMETHEUS_RULE.write_text(prometheus_rule_text())


if __name__ == "__main__":
    write_prometheus_rule()
    print(f"wrote {PROMETHEUS_RULE.relative_to(REPO)}", file=sys.stderr)
