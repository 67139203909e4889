"""Errors of `cnnserve quantize`; the CLI prints their message and exits 1.

ExportPipelineError                 (model_export.errors)
 +-- QuantizationError              the model or its versions cannot be quantized as asked
      +-- CalibrationDataError      no usable calibration or evaluation images
      +-- QuantizationRefusedError  the INT8 model loses more than the stated bound
"""

from __future__ import annotations

from typing import Any

from model_export.errors import ExportPipelineError

__all__ = ["CalibrationDataError", "QuantizationError", "QuantizationRefusedError"]


class QuantizationError(ExportPipelineError):
    pass


class CalibrationDataError(QuantizationError):
    pass


class QuantizationRefusedError(QuantizationError):
    """Every INT8 candidate was measured and none met the bounds; nothing was written.

    ``measured`` holds the figures of the best candidate (accuracy drop in points, top-1
    agreement), so a caller can say by how much it missed.
    """

    def __init__(self, message: str, *, measured: dict[str, Any]) -> None:
        super().__init__(message)
        self.measured = measured
