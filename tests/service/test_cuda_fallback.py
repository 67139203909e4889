"""The CUDA fallback for real: onnxruntime-gpu on a machine without a usable GPU.

A second virtual environment gets the gpu extra (onnxruntime-gpu, which installs and imports
without a GPU). In `auto` the service serves on the CPU and says why at every place a user
looks; in `cuda` no model becomes ready and the server reports unready.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from testkit import REPO, ServerFactory

from service.runtime import gpu_present

pytestmark = pytest.mark.slow
GPU_VENV = REPO / ".venv-ortgpu"


@pytest.fixture(scope="module")
def gpu_cnnserve() -> Path:
    """`cnnserve` from a venv with onnxruntime-gpu instead of onnxruntime (rebuilt whenever
    pyproject.toml changes, so it never serves with stale dependencies)."""
    executable = GPU_VENV / "bin" / "cnnserve"
    stamp = GPU_VENV / ".installed"
    wanted = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text() != wanted:
        if not (GPU_VENV / "bin" / "pip").is_file():
            subprocess.run([sys.executable, "-m", "venv", str(GPU_VENV)], check=True)
        subprocess.run(
            [str(GPU_VENV / "bin" / "pip"), "install", "-q", "-e", f"{REPO}[serve,gpu]"],
            check=True,
            timeout=1500,
        )
        stamp.write_text(wanted)
    check = subprocess.run(
        [
            str(GPU_VENV / "bin" / "python"),
            "-c",
            "import onnxruntime as o; print(o.get_device(), o.get_available_providers())",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "CUDAExecutionProvider" in check.stdout, check.stdout
    return executable


def test_auto_serves_on_cpu_and_reports_why_not_cuda(
    start_server: ServerFactory, gpu_cnnserve: Path
) -> None:
    server = start_server(executable=gpu_cnnserve, providers="auto")
    ready = httpx.get(f"{server.url}/health/ready").json()
    lenet = next(m for m in ready["models"] if m["name"] == "lenet5-fashion")
    assert lenet["providers"] == ["CPUExecutionProvider"]
    assert "could not place the model on CUDA" in lenet["fallback_reason"]
    info = httpx.get(f"{server.url}/v1/models/lenet5-fashion").json()
    assert info["device"] == "cpu" and info["fallback_reason"] == lenet["fallback_reason"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'model="lenet5-fashion",provider="cpu"' in metrics and "CUDA" in metrics
    said = [e for e in server.log_entries() if "run on CPU" in e["message"]]
    assert len(said) == 1  # the log says so too: once, not once per model
    # Where no GPU exists the CPU is the plan (info); a GPU that went unused is a warning.
    assert said[0]["level"] == ("warning" if gpu_present() else "info")
    response = httpx.post(
        f"{server.url}/v1/models/lenet5-fashion/classify",
        content=(REPO / "models" / "lenet5-fashion" / "curves.png").read_bytes(),
        headers={"Content-Type": "image/png"},
    )
    assert response.status_code == 200


def test_cuda_mode_refuses_to_serve_on_cpu(start_server: ServerFactory, gpu_cnnserve: Path) -> None:
    server = start_server(executable=gpu_cnnserve, providers="cuda", wait=False)
    deadline_ok = False
    for _ in range(150):
        try:
            response = httpx.get(f"{server.url}/health/ready", timeout=2)
            deadline_ok = True
            break
        except httpx.TransportError:
            time.sleep(0.2)
    assert deadline_ok, server.log()
    assert response.status_code == 503
    models = {m["name"]: m for m in response.json()["models"]}
    assert all(m["state"] == "unavailable" for m in models.values())
    assert "CNNSERVE_PROVIDERS=cuda" in models["lenet5-fashion"]["reason"]
    refused = httpx.post(
        f"{server.url}/v1/models/lenet5-fashion/classify",
        content=b"x",
        headers={"Content-Type": "image/png"},
    )
    assert refused.status_code == 503
