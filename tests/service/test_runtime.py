"""Execution providers: cpu never touches CUDA; auto explains its fallback; cuda is strict."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from service.runtime import CPU, CUDA, ModelLoadError, SessionConfig, create_session

LENET = Path(__file__).resolve().parents[2] / "models" / "lenet5-fashion" / "1" / "model.onnx"


def test_cpu_mode_places_on_cpu_without_a_reason() -> None:
    session, placement = create_session(str(LENET), SessionConfig("cpu"))
    assert session.get_providers() == [CPU]
    assert placement.providers == (CPU,) and placement.fallback_reason is None


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this build has CUDA")
def test_auto_falls_back_to_cpu_and_says_why() -> None:
    _, placement = create_session(str(LENET), SessionConfig("auto"))
    assert placement.device == "cpu"
    assert placement.fallback_reason is not None
    assert "no CUDA execution provider" in placement.fallback_reason


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this build has CUDA")
def test_cuda_mode_refuses_a_cpu_only_runtime() -> None:
    with pytest.raises(ModelLoadError, match="CNNSERVE_PROVIDERS=cuda"):
        create_session(str(LENET), SessionConfig("cuda"))
