"""Check an exported ONNX file: the ONNX checker, ONNX Runtime on the CPU, and PyTorch parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from model_export.errors import VerificationError

__all__ = ["ATOL", "RTOL", "verify_onnx"]

# ONNX Runtime fuses and reorders float32 arithmetic; these bounds hold for every model here
# and still catch a single tampered weight.
RTOL, ATOL = 1e-3, 1e-4


def verify_onnx(path: Path, model: nn.Module, images: np.ndarray) -> float:
    """Raise VerificationError unless ONNX Runtime reproduces ``model`` on ``images``.

    Returns the largest absolute difference between the two sets of outputs.
    """
    try:
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # the checker and ORT raise a zoo of types
        raise VerificationError(f"{path} is not a valid ONNX model: {exc}") from exc
    input_name = session.get_inputs()[0].name
    actual = session.run(None, {input_name: images})[0]
    with torch.no_grad():
        expected = model.eval()(torch.from_numpy(images)).numpy()
    if actual.shape != expected.shape:
        raise VerificationError(
            f"output shape {actual.shape} from ONNX Runtime, {expected.shape} from PyTorch"
        )
    diff = np.abs(actual - expected)
    max_diff = float(diff.max())
    bad = diff > ATOL + RTOL * np.abs(expected)
    if bad.any():
        raise VerificationError(
            f"ONNX Runtime differs from PyTorch on {int(bad.sum())} of {bad.size} outputs "
            f"(max |difference| {max_diff:.3e}, tolerance rtol={RTOL} atol={ATOL})",
            max_abs_diff=max_diff,
        )
    return max_diff
