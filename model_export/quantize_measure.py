"""Measuring a quantized model against its FP32 source: top-1 predictions and latency.

Latency is in-process ONNX Runtime on one thread, per image, at a given batch size. Models
are timed in turn, round after round (FP32, INT8, FP32, INT8, ...), a few runs per turn, so
that whatever else the machine is doing hits every model alike; the median is reported.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

__all__ = ["cpu_facts", "interleaved_latency", "outputs", "predictions", "session", "top1"]

# FP32 is "confident" about an image when its top-1 probability reaches this.
CONFIDENT = 0.5


def session(model: Path | bytes, *, threads: int = 0) -> ort.InferenceSession:
    """A CPU session with every graph optimisation (as the server makes them); ``threads``
    0 lets ONNX Runtime use every core."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def outputs(model: ort.InferenceSession, inputs: np.ndarray, *, batch: int = 250) -> np.ndarray:
    """The model's first output (class scores) for every input, in order."""
    name = model.get_inputs()[0].name
    return np.concatenate(
        [
            np.asarray(model.run(None, {name: inputs[start : start + batch]})[0])
            for start in range(0, len(inputs), batch)
        ]
    )


def predictions(model: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    """The top-1 class index of every input, in order."""
    return outputs(model, inputs).argmax(axis=1)


def top1(scores: np.ndarray, *, kind: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """(class index, its probability) per row of ``scores``: logits go through a softmax,
    probabilities are taken as they are."""
    if kind == "logits":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        scores = shifted / shifted.sum(axis=1, keepdims=True)
    return scores.argmax(axis=1), scores.max(axis=1)


def _batch(sample: np.ndarray, size: int) -> np.ndarray:
    repeats = -(-size // len(sample))
    return np.ascontiguousarray(np.concatenate([sample] * repeats)[:size])


def interleaved_latency(
    models: Mapping[str, Path | bytes],
    sample: np.ndarray,
    *,
    batches: Sequence[int] = (1, 32),
    rounds: int = 15,
    warmup: int = 3,
    per_turn: int = 3,
) -> dict[str, dict[int, float]]:
    """Median milliseconds per image of each model at each batch size, on one thread.

    ``sample`` holds real inputs (N, C, H, W); a batch takes the first ones, repeated when
    there are too few. Every round gives each model a turn of ``per_turn`` runs per batch
    size, one model after the other; the first run of a turn, whose caches the previous
    model has just evicted, is not counted unless ``per_turn`` is 1 (a server runs one model
    call after call, warm).
    """
    sessions = {label: session(model, threads=1) for label, model in models.items()}
    names = {label: s.get_inputs()[0].name for label, s in sessions.items()}
    samples: dict[str, dict[int, list[float]]] = {label: {} for label in sessions}
    for size in batches:
        x = _batch(sample, size)
        for label, s in sessions.items():
            for _ in range(warmup):
                s.run(None, {names[label]: x})
        for _ in range(rounds):
            for label, s in sessions.items():
                for run in range(per_turn):
                    started = time.perf_counter()
                    s.run(None, {names[label]: x})
                    elapsed = time.perf_counter() - started
                    if run > 0 or per_turn == 1:
                        samples[label].setdefault(size, []).append(elapsed * 1000 / size)
    return {
        label: {size: statistics.median(times) for size, times in by_size.items()}
        for label, by_size in samples.items()
    }


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_facts() -> dict[str, Any]:
    """The CPU the figures were measured on. INT8 accuracy depends on it: without a VNNI
    dot-product instruction (AVX-512 VNNI or AVX-VNNI), ONNX Runtime's uint8 x int8 kernels
    add pairs of products in 16 bits, which can saturate unless weights use 7 bits."""
    flags = _cpu_flags()
    return {
        "cpu": _cpu_model(),
        "machine": platform.machine(),
        "avx2": "avx2" in flags,
        "avx512": any(f.startswith("avx512") for f in flags),
        "vnni": bool({"avx512_vnni", "avx512vnni", "avx_vnni"} & flags),
        "onnxruntime": ort.__version__,
    }
