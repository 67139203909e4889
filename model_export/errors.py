"""Errors raised by the training and export pipeline.

ExportPipelineError
 +-- DatasetMissingError        a dataset's files are not installed
 +-- UnknownArchitectureError   no architecture of that name
 +-- UnknownDatasetError        no dataset of that name
 +-- RunNotFoundError           a run folder without a checkpoint
 +-- VerificationError          ONNX Runtime disagrees with PyTorch, or the file is invalid
 +-- ImportModelError           a user's ONNX model cannot be served as a classifier
"""

from __future__ import annotations

__all__ = [
    "DatasetMissingError",
    "ExportPipelineError",
    "ImportModelError",
    "RunNotFoundError",
    "UnknownArchitectureError",
    "UnknownDatasetError",
    "VerificationError",
]


class ExportPipelineError(Exception):
    """Base of every error this package raises on purpose; the CLI prints its message."""


class DatasetMissingError(ExportPipelineError):
    pass


class UnknownArchitectureError(ExportPipelineError):
    pass


class UnknownDatasetError(ExportPipelineError):
    pass


class RunNotFoundError(ExportPipelineError):
    pass


class VerificationError(ExportPipelineError):
    """The exported model is invalid or its outputs differ from PyTorch's."""

    def __init__(self, message: str, *, max_abs_diff: float | None = None) -> None:
        super().__init__(message)
        self.max_abs_diff = max_abs_diff


class ImportModelError(ExportPipelineError):
    pass
