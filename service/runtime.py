"""ONNX Runtime sessions: provider choice with an explained fallback, inference, feature maps.

Nothing here knows about HTTP. A ``ModelRuntime`` is one version of one model: its
inference session (shared by every request: ``InferenceSession.run`` is thread-safe), the
layers a user can inspect, and a second session, built on first use, that also returns
those layers' activations.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort

from service.graph import Layer, describe_layers
from service.head import Head, classifier_head
from service.model_card import ModelCard
from service.trust import VersionTrust

__all__ = [
    "ModelLoadError",
    "ModelRuntime",
    "Placement",
    "SessionConfig",
    "create_session",
    "gpu_present",
    "usable_cores",
]

log = logging.getLogger(__name__)

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
_ONNX_TYPES = {"float32": "tensor(float)", "uint8": "tensor(uint8)"}
ProviderMode = Literal["auto", "cuda", "cpu"]


class ModelLoadError(Exception):
    """A model version cannot be served; the message says why."""


@dataclass(frozen=True)
class SessionConfig:
    providers: ProviderMode = "auto"
    intra_op_threads: int = 0
    inter_op_threads: int = 1


@dataclass(frozen=True)
class Placement:
    """Where ONNX Runtime put a session, and why not on CUDA when CUDA was asked for."""

    providers: tuple[str, ...]
    fallback_reason: str | None = None
    gpu_present: bool = False  # an NVIDIA GPU on this machine (CPU was not the plan)

    @property
    def device(self) -> str:
        return "cuda" if CUDA in self.providers else "cpu"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: taskset and container CPU sets
    count), not the machine's: ONNX Runtime's own default counts the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _options(config: SessionConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = config.intra_op_threads or usable_cores()
    options.inter_op_num_threads = config.inter_op_threads
    # Spinning threads would steal the cores that decode images between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages or torch, when present, so that
    onnxruntime-gpu works without LD_LIBRARY_PATH. Missing libraries are reported by ONNX
    Runtime on stderr and then by the session's placement; nothing raises here."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # best effort: the session creation says what is missing
            log.debug("onnxruntime.preload_dlls failed: %s", exc)


def _cuda_unavailable_reason() -> str | None:
    """Why ONNX Runtime cannot offer CUDA at all, or None when it says it can."""
    if CUDA not in ort.get_available_providers():
        return (
            f"this onnxruntime build ({ort.__version__}, {ort.get_device()}) has no CUDA "
            "execution provider; install onnxruntime-gpu (the gpu extra)"
        )
    _preload_cuda_libraries()
    return None


def create_session(
    model: bytes | str, config: SessionConfig
) -> tuple[ort.InferenceSession, Placement]:
    """Create a session as ``config.providers`` asks: auto falls back, cuda is strict."""
    options = _options(config)
    if config.providers == "cpu":
        return ort.InferenceSession(model, options, providers=[CPU]), Placement((CPU,))
    reason = _cuda_unavailable_reason()
    if reason is None:
        try:
            session = ort.InferenceSession(model, options, providers=[CUDA, CPU])
        except Exception as exc:  # ORT raises its own untyped errors
            raise ModelLoadError(f"could not create an ONNX Runtime session: {exc}") from exc
        providers = tuple(session.get_providers())
        if CUDA in providers:
            return session, Placement(providers)
        reason = (
            "onnxruntime-gpu could not place the model on CUDA: the CUDA provider failed "
            "to load (no GPU visible, or CUDA 13 / cuDNN 9 libraries missing)"
        )
    if config.providers == "cuda":
        raise ModelLoadError(f"CNNSERVE_PROVIDERS=cuda, but {reason}")
    session = ort.InferenceSession(model, options, providers=[CPU])
    return session, Placement((CPU,), fallback_reason=reason, gpu_present=gpu_present())


@functools.cache
def gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU (its driver lists one), used or not."""
    return Path("/dev/nvidia0").exists() or any(Path("/proc/driver/nvidia/gpus").glob("*"))


def _with_outputs(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """``model`` with the activations ``outputs`` added as graph outputs (a copy; ``model``
    itself when there are none)."""
    if not outputs:
        return model
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    present = {o.name for o in proto.graph.output}
    for name in outputs:
        if name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    return proto


class ModelRuntime:
    """One loaded version of one model."""

    def __init__(
        self, name: str, version: str, path: Path, card: ModelCard, config: SessionConfig
    ) -> None:
        self.name, self.version, self.path, self.card = name, version, path, card
        self._config = config
        try:
            # Calibration and out-of-distribution statistics: the layer outputs the latter
            # reads are added to the inference graph, so one forward pass gives them all.
            self.trust = VersionTrust.load(card, version, path.parent)
        except ValueError as exc:
            raise ModelLoadError(f"{path.parent}: {exc}") from exc
        try:
            self._proto = onnx.load(str(path))
            served = _with_outputs(self._proto, self.trust.outputs)
            self.session, self.placement = create_session(served.SerializeToString(), config)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(f"{path} is not a loadable ONNX model: {exc}") from exc
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise ModelLoadError(
                f"{path}: expected one input and an output, found "
                f"{len(inputs)} inputs and {len(outputs)} outputs"
            )
        self.input = inputs[0]
        self.output = outputs[0]
        self._check_shapes()
        self.layers = describe_layers(self._proto, layout=card.input.layout)
        self._layers_by_name = {layer.name: layer for layer in self.layers}
        self._maps_session: ort.InferenceSession | None = None
        self._maps_lock = threading.Lock()
        # A GAP + linear head (class activation maps), or why the model has none.
        self.head: Head | str = classifier_head(self._proto)
        self._cam_session: ort.InferenceSession | None = None

    def _check_shapes(self) -> None:
        spec = self.card.input
        shape = list(self.input.shape)
        expected = spec.shape()
        if len(shape) != 4 or any(
            isinstance(d, int) and d != e for d, e in zip(shape[1:], expected, strict=True)
        ):
            raise ModelLoadError(
                f"input {self.input.name} has shape {shape}; model.json says "
                f"[N, {', '.join(map(str, expected))}] ({spec.layout})"
            )
        wanted = _ONNX_TYPES[spec.dtype]
        if self.input.type != wanted:
            raise ModelLoadError(
                f"input {self.input.name} is {self.input.type}; model.json says {spec.dtype}"
            )
        classes = self.output.shape[-1] if self.output.shape else None
        if isinstance(classes, int) and classes != len(self.card.labels):
            raise ModelLoadError(
                f"output {self.output.name} has {classes} classes; model.json "
                f"has {len(self.card.labels)} labels"
            )

    @property
    def input_shape(self) -> list[int]:
        """The input's shape with -1 for dynamic axes."""
        return [d if isinstance(d, int) else -1 for d in self.input.shape]

    def infer(self, batch: np.ndarray, full: bool = True) -> tuple[np.ndarray, ...]:
        """Run the model on a batch of its input (``card.input.shape(n)``): its first output
        (the class scores), then, if ``full``, each row's calibrated probabilities,
        out-of-distribution score and which methods fired (``VersionTrust.summarise``: from
        layer outputs of the same run, once per batch)."""
        if not full:
            return (self.session.run([self.output.name], {self.input.name: batch})[0],)
        names = [self.output.name, *self.trust.outputs]
        scores, *features = self.session.run(names, {self.input.name: batch})
        return scores, *self.trust.summarise(scores, tuple(features))

    def warm_up(self) -> None:
        spec = self.card.input
        self.infer(np.zeros(spec.shape(1), dtype=spec.numpy_dtype))

    def layer(self, name: str) -> Layer | None:
        return self._layers_by_name.get(name)

    def _augmented(self, outputs: list[str]) -> ort.InferenceSession:
        """A session of the model with ``outputs`` (activations) added as graph outputs."""
        proto = _with_outputs(self._proto, outputs)
        session, _ = create_session(proto.SerializeToString(), self._config)
        return session

    def _feature_session(self) -> ort.InferenceSession:
        """The model with every listed layer's activation added as an output (built once)."""
        with self._maps_lock:
            if self._maps_session is None:
                self._maps_session = self._augmented([layer.output for layer in self.layers])
            return self._maps_session

    def cam_features(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One forward pass of one input: (its scores, the (C, h, w) feature maps its
        classifier head pools). Only for a model whose ``head`` is a ``Head``."""
        assert isinstance(self.head, Head)
        with self._maps_lock:
            if self._cam_session is None:  # the model plus one output: its fusions stay
                self._cam_session = self._augmented([self.head.features])
        scores, maps = self._cam_session.run(
            [self.output.name, self.head.features], {self.input.name: image[None]}
        )
        return scores[0], np.ascontiguousarray(maps[0], dtype=np.float32)

    def feature_maps(self, image: np.ndarray, layers: list[Layer]) -> list[np.ndarray]:
        """Activations (C, H, W) of ``layers`` for one input of the model."""
        outputs = [layer.output for layer in layers]
        arrays = self._feature_session().run(outputs, {self.input.name: image[None]})
        return [np.ascontiguousarray(a[0], dtype=np.float32) for a in arrays]
