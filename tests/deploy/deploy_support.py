"""Rendering and schema helpers for the tests of the deployment manifests under deploy/.

No cluster runs in CI: the manifests are rendered with `kubectl kustomize` (Debian's
kubernetes-client, installed by `make apt-deps` through mk/k8s.mk, or any kubectl on PATH;
`KUBECTL` overrides) and checked against a pinned Kubernetes version's OpenAPI schema with
kubernetes-validate, strictly (unknown fields fail).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# The oldest Kubernetes the manifests support (the preStop sleep action is on by default
# from 1.30). Every rendered object is validated against this version's schema.
KUBERNETES_VERSION = "1.30.0"

Manifest = dict[str, Any]

# Fields kustomize 2.0.3 (the one inside Debian's kubectl 1.20) understands. Newer ones
# (labels, patches, components, resources naming a directory) fail there.
KUSTOMIZE_2_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "bases",
    "images",
    "configMapGenerator",
    "secretGenerator",
    "generatorOptions",
    "patchesStrategicMerge",
    "patchesJson6902",
    "commonLabels",
    "commonAnnotations",
    "namespace",
    "namePrefix",
    "nameSuffix",
}
# Custom resources of the Prometheus operator (deploy/kubernetes/monitoring): no schema of
# theirs is at hand, so test_monitoring.py checks their structure and their pod-facing parts.
OPERATOR_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def kustomization_dirs() -> list[Path]:
    """Every directory under deploy/kubernetes that kustomize can render."""
    return sorted(path.parent for path in KUBERNETES.rglob("kustomization.yaml"))


def deployable_dirs() -> list[Path]:
    """The overlays and examples that deploy the service (the base alone is not meant to be
    applied; monitoring/ deploys the Prometheus operator's and Grafana's objects)."""
    return [
        path
        for path in kustomization_dirs()
        if path.name != "base" and path != KUBERNETES / "monitoring"
    ]


def dir_id(path: Path) -> str:
    return str(path.relative_to(KUBERNETES))


def _kubectl() -> str:
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl is None:
        pytest.fail(
            "kubectl not found: `make apt-deps` installs Debian's kubernetes-client "
            "(mk/k8s.mk), or point KUBECTL at one"
        )
    return kubectl


@functools.cache
def render(directory: Path) -> tuple[Manifest, ...]:
    """The objects `kubectl kustomize directory` prints (rendered once per session)."""
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {dir_id(directory)} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def load_yaml_documents(path: Path) -> list[Manifest]:
    with path.open() as stream:
        return [doc for doc in yaml.safe_load_all(stream) if doc]


def only(objects: tuple[Manifest, ...] | list[Manifest], kind: str) -> Manifest:
    """The one object of `kind`; fails when there are none or several."""
    found = [obj for obj in objects if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@functools.cache
def _definitions() -> referencing.Registry[Any]:
    schemas = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    folder = schemas / f"v{KUBERNETES_VERSION}-local-strict"
    if not folder.is_dir():
        pytest.fail(f"kubernetes-validate has no schema for Kubernetes {KUBERNETES_VERSION}")
    contents = json.loads((folder / "_definitions.json").read_text())
    return referencing.Resource.from_contents(contents) @ referencing.Registry()


def strict_schema_errors(fragment: Any, definition: str) -> Iterator[str]:
    """Errors of `fragment` against one core type of the pinned schema (strict), e.g.
    `io.k8s.api.core.v1.Container`: for the pod parts of custom resources that
    kubernetes-validate cannot check as a whole."""
    schema = {"$ref": f"https://kubernetes.io/api/_definitions.json#/$defs/{definition}"}
    validator = jsonschema.Draft202012Validator(schema, registry=_definitions())
    for error in validator.iter_errors(fragment):
        where = ".".join(str(part) for part in error.absolute_path) or "(root)"
        yield f"{where}: {error.message}"


def parse_cpu(quantity: str | int | float) -> float:
    """Cores in a Kubernetes CPU quantity: "2" -> 2.0, "500m" -> 0.5."""
    text = str(quantity)
    if text.endswith("m"):
        return int(text[:-1]) / 1000
    return float(text)
