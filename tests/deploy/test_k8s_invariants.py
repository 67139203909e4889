"""The rendered manifests agree with each other and with the service's own settings.

What each overlay and example must hold, read from `kubectl kustomize` output: the objects
point at each other (selectors, ports, the HPA's target), the pods are locked down, shutdown
timing matches the service's drain, and every setting is a real `Settings` field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from deploy_support import (
    KUBERNETES,
    Manifest,
    deployable_dirs,
    dir_id,
    only,
    parse_cpu,
    render,
)

from service.config import Settings
from service.server import DRAIN_BACKSTOP_S

CPU = KUBERNETES / "overlays" / "cpu"
GPU = KUBERNETES / "overlays" / "gpu"
SETTINGS_PREFIX = "CNNSERVE_"
READY_PATH = "/health/ready"
LIVE_PATH = "/health/live"

pytestmark = pytest.mark.parametrize("directory", deployable_dirs(), ids=dir_id)


def _deployment(directory: Path) -> Manifest:
    return only(render(directory), "Deployment")


def _pod_spec(directory: Path) -> dict[str, Any]:
    spec: dict[str, Any] = _deployment(directory)["spec"]["template"]["spec"]
    return spec


def _container(directory: Path) -> dict[str, Any]:
    containers = _pod_spec(directory)["containers"]
    assert [c["name"] for c in containers] == ["cnnserve"]
    container: dict[str, Any] = containers[0]
    return container


def _config(directory: Path) -> dict[str, str]:
    """The CNNSERVE_* settings the pod gets from its ConfigMap."""
    config_map = only(render(directory), "ConfigMap")
    refs = [
        source["configMapRef"]["name"]
        for source in _container(directory).get("envFrom", [])
        if "configMapRef" in source
    ]
    assert refs == [config_map["metadata"]["name"]], "the pod must read the rendered ConfigMap"
    data: dict[str, str] = config_map["data"]
    return data


def _settings(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as the pod would build them from its environment."""
    for key, value in _config(directory).items():
        monkeypatch.setenv(key, value)
    for variable in _container(directory).get("env", []):
        if "value" in variable:
            monkeypatch.setenv(variable["name"], variable["value"])
    return Settings()


def _container_port(directory: Path, port: int | str) -> int:
    """The container port a Service, NetworkPolicy or probe port (number or name) reaches."""
    ports = _container(directory)["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports]
        return port
    matching = [p["containerPort"] for p in ports if p.get("name") == port]
    assert matching, f"no container port named {port!r}"
    result: int = matching[0]
    return result


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def _pod_labels(directory: Path) -> dict[str, str]:
    labels: dict[str, str] = _deployment(directory)["spec"]["template"]["metadata"]["labels"]
    return labels


# Settings and configuration.


def test_every_config_key_is_a_settings_field(directory: Path) -> None:
    fields = {SETTINGS_PREFIX + name.upper() for name in Settings.model_fields}
    env_names = {v["name"] for v in _container(directory).get("env", [])}
    unknown = (set(_config(directory)) | env_names) - fields
    assert not unknown, f"not CNNSERVE_<field> of service.config.Settings: {sorted(unknown)}"


def test_config_values_are_valid_settings(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(directory, monkeypatch)
    assert settings.workers == 1, "scale with pods; one server process per pod"


def test_api_keys_come_from_a_secret(directory: Path) -> None:
    assert f"{SETTINGS_PREFIX}API_KEYS" not in _config(directory)
    (api_keys,) = [
        v for v in _container(directory)["env"] if v["name"] == f"{SETTINGS_PREFIX}API_KEYS"
    ]
    reference = api_keys["valueFrom"]["secretKeyRef"]
    assert reference["name"] and reference["key"]
    assert not reference.get("optional", False), "a missing Secret must not start pods open"


def test_admin_keys_are_an_optional_secret_entry(directory: Path) -> None:
    """Without admin keys the repository API is off: a missing entry must not stop pods."""
    assert f"{SETTINGS_PREFIX}ADMIN_KEYS" not in _config(directory)
    (admin_keys,) = [
        v for v in _container(directory)["env"] if v["name"] == f"{SETTINGS_PREFIX}ADMIN_KEYS"
    ]
    reference = admin_keys["valueFrom"]["secretKeyRef"]
    assert reference["name"] and reference["key"] and reference["optional"] is True


def test_service_links_are_off(directory: Path) -> None:
    # A Service named cnnserve would set CNNSERVE_PORT=tcp://..., which Settings reads.
    assert _pod_spec(directory)["enableServiceLinks"] is False


def test_threads_fit_the_cpu_limit(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings(directory, monkeypatch)
    cores = parse_cpu(_container(directory)["resources"]["limits"]["cpu"])
    # 0 means "the node's cores", which ignores the pod's CPU quota.
    assert 1 <= settings.intra_op_threads <= cores
    assert 1 <= settings.decode_threads <= cores


def test_model_dir_is_baked_in_or_mounted(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = str(_settings(directory, monkeypatch).model_dir)
    mounts = [m["mountPath"] for m in _container(directory).get("volumeMounts", [])]
    assert model_dir == "/app/models" or model_dir in mounts, model_dir


# Ports, probes and the objects that point at the pods.


def test_container_listens_on_the_configured_port(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = _container(directory)["ports"]
    configured = _settings(directory, monkeypatch)
    assert port == {"name": "http", "containerPort": configured.port, "protocol": "TCP"}
    assert configured.host == "0.0.0.0"


def test_probes(directory: Path) -> None:
    container = _container(directory)
    port = Settings().port
    for probe_name, path in [
        ("startupProbe", READY_PATH),
        ("readinessProbe", READY_PATH),
        ("livenessProbe", LIVE_PATH),
    ]:
        get = container[probe_name]["httpGet"]
        assert get["path"] == path, probe_name
        assert _container_port(directory, get["port"]) == port, probe_name
    startup = container["startupProbe"]
    # Loading and warming every model must fit in the startup budget; liveness waits for it.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120
    assert "initialDelaySeconds" not in container["livenessProbe"]


def test_service_selects_the_pods_on_the_http_port(directory: Path) -> None:
    service = only(render(directory), "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert _selects(service["spec"]["selector"], _pod_labels(directory))
    (port,) = service["spec"]["ports"]
    assert port["name"] == "http"
    assert _container_port(directory, port["targetPort"]) == Settings().port


def test_deployment_selects_its_own_pods(directory: Path) -> None:
    selector = _deployment(directory)["spec"]["selector"]["matchLabels"]
    assert _selects(selector, _pod_labels(directory))


def test_hpa_targets_the_deployment(directory: Path) -> None:
    hpa = only(render(directory), "HorizontalPodAutoscaler")
    deployment = _deployment(directory)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] >= hpa["spec"]["minReplicas"]


def test_hpa_scales_on_cpu_and_on_queue_depth(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics = only(render(directory), "HorizontalPodAutoscaler")["spec"]["metrics"]
    by_type = {metric["type"]: metric for metric in metrics}
    assert by_type["Resource"]["resource"]["name"] == "cpu"
    # Utilization is a share of the request: without one the HPA cannot compute it.
    assert "cpu" in _container(directory)["resources"]["requests"]
    pods = by_type["Pods"]["pods"]
    assert pods["metric"]["name"] == "cnnserve_pod_queue_depth"
    # One full batch waiting per pod, on average, is the point to add pods.
    settings = _settings(directory, monkeypatch)
    assert pods["target"] == {
        "type": "AverageValue",
        "averageValue": str(settings.max_batch_size),
    }


def test_pdb_covers_the_pods(directory: Path) -> None:
    pdb = only(render(directory), "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], _pod_labels(directory))
    assert pdb["spec"].get("maxUnavailable") == 1 or pdb["spec"].get("minAvailable") == 1


def test_network_policy_admits_only_the_service_port(directory: Path) -> None:
    policy = only(render(directory), "NetworkPolicy")
    assert _selects(policy["spec"]["podSelector"]["matchLabels"], _pod_labels(directory))
    assert "Ingress" in policy["spec"]["policyTypes"]
    rules = policy["spec"]["ingress"]
    assert rules
    for rule in rules:
        # A rule without ports admits every port.
        assert rule.get("ports"), rule
        for port in rule["ports"]:
            assert port["protocol"] == "TCP"
            assert _container_port(directory, port["port"]) == Settings().port


def test_prometheus_scrape_annotations(directory: Path) -> None:
    annotations = _deployment(directory)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == Settings().port
    assert annotations["prometheus.io/path"] == "/metrics"


# Availability, shutdown and placement.


def test_at_least_two_replicas_and_zero_unavailable_rollout(directory: Path) -> None:
    spec = _deployment(directory)["spec"]
    assert spec["replicas"] >= 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] not in (0, "0%")


def test_grace_period_covers_prestop_and_drain(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drain = _settings(directory, monkeypatch).drain_timeout_s
    pre_stop = _container(directory)["lifecycle"]["preStop"]["sleep"]["seconds"]
    grace = _pod_spec(directory)["terminationGracePeriodSeconds"]
    # The grace period counts from the preStop hook; SIGTERM (the app's drain) comes after it,
    # and uvicorn's own limit DRAIN_BACKSTOP_S after the drain; then a margin to exit.
    assert pre_stop >= 5, "endpoints and load balancers need a few seconds to drop the pod"
    assert grace >= pre_stop + drain + DRAIN_BACKSTOP_S + 4, (grace, pre_stop, drain)


def test_spread_across_nodes(directory: Path) -> None:
    constraints = _pod_spec(directory)["topologySpreadConstraints"]
    (by_node,) = [c for c in constraints if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node["maxSkew"] == 1
    assert _selects(by_node["labelSelector"]["matchLabels"], _pod_labels(directory))


# Security.


def test_runs_non_root_and_locked_down(directory: Path) -> None:
    pod = _pod_spec(directory)["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"]["type"] == "RuntimeDefault"
    assert _pod_spec(directory)["automountServiceAccountToken"] is False
    for container in _pod_spec(directory)["containers"] + _pod_spec(directory).get(
        "initContainers", []
    ):
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] != 0
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged", False) is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert "add" not in context["capabilities"]


def test_tmp_is_a_writable_empty_dir(directory: Path) -> None:
    volumes = {v["name"]: v for v in _pod_spec(directory)["volumes"]}
    (tmp,) = [m for m in _container(directory)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert "emptyDir" in volumes[tmp["name"]]
    assert not tmp.get("readOnly", False)


def test_requests_and_limits(directory: Path) -> None:
    for container in _pod_spec(directory)["containers"] + _pod_spec(directory).get(
        "initContainers", []
    ):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), (container["name"], kind)


def test_pods_get_guaranteed_qos(directory: Path) -> None:
    # Guaranteed needs requests equal to limits in every container, init containers too.
    pod = _pod_spec(directory)
    for container in pod["containers"] + pod.get("initContainers", []):
        resources = container["resources"]
        assert resources["requests"] == resources["limits"], container["name"]
    server_cpu = parse_cpu(_container(directory)["resources"]["limits"]["cpu"])
    assert server_cpu.is_integer(), "whole cores for the static CPU manager policy"


# CPU against GPU.


def test_image_and_accelerator(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    container = _container(directory)
    settings = _settings(directory, monkeypatch)
    limits = container["resources"]["limits"]
    pod = _pod_spec(directory)
    if directory == GPU:
        assert container["image"] == "cnnserve:gpu"
        assert limits["nvidia.com/gpu"] == 1
        assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
        # Strict: without a usable GPU the pod never becomes ready.
        assert settings.providers == "cuda"
        assert pod["nodeSelector"]
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert container["image"] == "cnnserve:cpu"
        assert "nvidia.com/gpu" not in limits
        assert settings.providers == "cpu"
