"""deploy/kserve/inferenceservice.yaml: a ServingRuntime and an InferenceService for KServe.

No schema for KServe's custom resources ships with kubernetes-validate, so their structure
is checked here: the KServe fields by hand, the embedded Kubernetes parts (containers,
volumes) against the pinned Kubernetes schema, strictly.
"""

from __future__ import annotations

from typing import Any

import pytest
from deploy_support import DEPLOY, Manifest, load_yaml_documents, only, strict_schema_errors

from service.config import Settings

INFERENCE_SERVICE = DEPLOY / "kserve" / "inferenceservice.yaml"
CONTAINER = "io.k8s.api.core.v1.Container"
VOLUME = "io.k8s.api.core.v1.Volume"
# Fields of KServe v1beta1 PredictorSpec used here, with ModelSpec's own; the rest of a
# model spec is a Kubernetes container.
PREDICTOR_FIELDS = {
    "model",
    "minReplicas",
    "maxReplicas",
    "scaleMetric",
    "scaleTarget",
    "canaryTrafficPercent",
    "containerConcurrency",
    "timeout",
    "enableServiceLinks",
    "serviceAccountName",
    "nodeSelector",
    "tolerations",
}
MODEL_SPEC_FIELDS = {"modelFormat", "runtime", "protocolVersion", "storageUri"}
SERVING_RUNTIME_FIELDS = {
    "supportedModelFormats",
    "protocolVersions",
    "multiModel",
    "disabled",
    "containers",
    "volumes",
    "nodeSelector",
    "tolerations",
    "affinity",
    "labels",
    "annotations",
}
SCALE_METRICS = {"cpu", "memory", "concurrency", "rps"}
# Knative Serving names the single port by the protocol it speaks.
KNATIVE_PORT_NAMES = {"http1", "h2c"}


@pytest.fixture(scope="module")
def documents() -> list[Manifest]:
    return load_yaml_documents(INFERENCE_SERVICE)


@pytest.fixture(scope="module")
def runtime(documents: list[Manifest]) -> Manifest:
    return only(documents, "ServingRuntime")


@pytest.fixture(scope="module")
def isvc(documents: list[Manifest]) -> Manifest:
    return only(documents, "InferenceService")


@pytest.fixture(scope="module")
def container(runtime: Manifest) -> dict[str, Any]:
    (server,) = runtime["spec"]["containers"]
    result: dict[str, Any] = server
    return result


def test_kinds_and_api_versions(documents: list[Manifest]) -> None:
    assert sorted((d["apiVersion"], d["kind"]) for d in documents) == [
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    ]
    for document in documents:
        assert set(document) == {"apiVersion", "kind", "metadata", "spec"}
        assert document["metadata"]["name"]


def test_predictor_uses_the_runtime_with_open_inference_protocol(
    runtime: Manifest, isvc: Manifest
) -> None:
    predictor = isvc["spec"]["predictor"]
    assert set(isvc["spec"]) == {"predictor"}
    assert set(predictor) <= PREDICTOR_FIELDS, set(predictor) - PREDICTOR_FIELDS
    model = predictor["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] in formats
    assert "v2" in runtime["spec"]["protocolVersions"]
    # The models are baked in the image: no storage initializer.
    assert "storageUri" not in model


def test_predictor_scaling(isvc: Manifest) -> None:
    predictor = isvc["spec"]["predictor"]
    assert predictor["minReplicas"] >= 2
    assert predictor["maxReplicas"] >= predictor["minReplicas"]
    assert predictor["scaleMetric"] in SCALE_METRICS
    assert predictor["scaleTarget"] >= 1
    assert predictor["enableServiceLinks"] is False


def test_model_spec_container_part_is_valid_kubernetes(isvc: Manifest) -> None:
    model = isvc["spec"]["predictor"]["model"]
    container_part = {k: v for k, v in model.items() if k not in MODEL_SPEC_FIELDS}
    errors = list(strict_schema_errors({"name": "kserve-container", **container_part}, CONTAINER))
    assert not errors, errors
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(model["resources"][kind])


def test_runtime_structure(runtime: Manifest) -> None:
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_FIELDS, set(spec) - SERVING_RUNTIME_FIELDS
    errors = [f"container {e}" for e in strict_schema_errors(spec["containers"][0], CONTAINER)]
    for volume in spec.get("volumes", []):
        errors += [f"volume {e}" for e in strict_schema_errors(volume, VOLUME)]
    assert not errors, errors


def test_runtime_container_serves_the_app_port(container: dict[str, Any]) -> None:
    assert container["name"] == "kserve-container"
    assert container["image"] == "cnnserve:cpu"
    (port,) = container["ports"]
    assert port["name"] in KNATIVE_PORT_NAMES
    assert port["containerPort"] == Settings().port


def test_runtime_probes(container: dict[str, Any]) -> None:
    port = container["ports"][0]["containerPort"]
    for probe_name, path in [
        ("startupProbe", "/health/ready"),
        ("readinessProbe", "/health/ready"),
        ("livenessProbe", "/health/live"),
    ]:
        get = container[probe_name]["httpGet"]
        assert get["path"] == path, probe_name
        # Knative accepts a probe port only when it is the container port.
        assert get["port"] == port, probe_name
    # Knative forbids lifecycle hooks: its queue-proxy drains requests.
    assert "lifecycle" not in container


def test_runtime_settings_are_real(
    container: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fields = {"CNNSERVE_" + name.upper() for name in Settings.model_fields}
    names = {variable["name"] for variable in container["env"]}
    assert names <= fields, names - fields
    for variable in container["env"]:
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    settings = Settings()
    assert settings.workers == 1
    assert settings.host == "0.0.0.0"
    assert settings.port == container["ports"][0]["containerPort"]
    (api_keys,) = [v for v in container["env"] if v["name"] == "CNNSERVE_API_KEYS"]
    assert api_keys["valueFrom"]["secretKeyRef"]["name"] == "cnnserve-api-keys"


def test_runtime_container_is_locked_down(runtime: Manifest, container: dict[str, Any]) -> None:
    context = container["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    (tmp,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
