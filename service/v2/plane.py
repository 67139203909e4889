"""The Open Inference Protocol on the data plane: metadata, configuration and inference.

No HTTP here (``service.api.v2`` maps HTTP to these methods). Inference reads the request's
structure in the decode pool, refuses what the model cannot take before converting a value,
binds the input on the version serving now and runs it through ``DataPlane.infer_tensor``,
the same batcher the native API uses.

What one request can cost: its body is at most ``body_limit`` bytes (what the model's largest
batch needs as JSON, within ``max_body_bytes``), its tensors at most the model's batch of
elements, its JSON at most ``MAX_JSON_VALUES`` values.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from service import tracing
from service.config import Settings
from service.dataplane import DataPlane
from service.model_card import triton_config
from service.repository import ModelVersion
from service.v2.binding import (
    TensorSpec,
    bind_input,
    classification,
    model_tensors,
    select_outputs,
)
from service.v2.schemas import MetadataTensor, ModelConfig, ModelMetadata
from service.v2.wire import (
    InferRequest,
    OutputTensor,
    RequestedOutput,
    decode_body,
    decode_request,
    encode_response,
)

__all__ = ["EXTENSIONS", "PLATFORM", "V2Plane"]

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository", "model_configuration"]
# A tensor value as JSON at worst: a float32 with all its digits, its exponent and a comma;
# the widest binary datatype takes 8 bytes.
JSON_BYTES_PER_VALUE = 32
HEADER_BYTES = 64 * 1024  # names, shapes and parameters around the data
# Responses with more values than this are encoded in the pool, not on the event loop.
INLINE_RESPONSE_VALUES = 16_384


class V2Plane:
    def __init__(self, dataplane: DataPlane, settings: Settings) -> None:
        self.dataplane = dataplane
        self.settings = settings

    # -- limits ------------------------------------------------------------------------

    def max_elements(self, model: ModelVersion) -> int:
        """The most input values a request to ``model`` can carry: its largest batch."""
        inp, _ = model_tensors(model.runtime)
        dims = inp.shape[1:] if inp.shape and inp.shape[0] == -1 else inp.shape
        if any(d < 0 for d in dims):  # the graph leaves a dimension open
            return self.settings.max_body_bytes
        return self.settings.max_images_per_request * math.prod(dims)

    def body_limit(self, model: ModelVersion) -> int:
        """The largest ``/infer`` body ``model`` can need, within ``max_body_bytes``."""
        need = self.max_elements(model) * JSON_BYTES_PER_VALUE + HEADER_BYTES
        return min(self.settings.max_body_bytes, need)

    # -- metadata ----------------------------------------------------------------------

    def metadata(self, name: str, version: str | None) -> ModelMetadata:
        model = self.dataplane.model(name, version)
        entry = self.dataplane.repository.entry(name)
        inp, outputs = model_tensors(model.runtime)
        return ModelMetadata(
            name=name,
            versions=sorted(entry.versions, key=int),
            platform=PLATFORM,
            inputs=[_metadata_tensor(inp)],
            outputs=[_metadata_tensor(spec) for spec in outputs],
        )

    def config(self, name: str, version: str | None) -> ModelConfig:
        """Triton's model configuration, as the folder's config.pbtxt says it (one source:
        ``service.model_card.triton_config``), with this server's batch limit."""
        model = self.dataplane.model(name, version)
        config = triton_config(
            model.runtime.card, max_batch_size=self.settings.max_images_per_request
        )
        if not (self.dataplane.repository.model_dir / name / "labels.txt").is_file():
            for tensor in config["output"]:
                tensor.pop("label_filename", None)
        return ModelConfig.model_validate(config | {"name": name})

    # -- inference ---------------------------------------------------------------------

    async def infer(
        self,
        model: ModelVersion,
        version: str | None,
        body: bytes,
        *,
        encoding: str | None,
        header_length: str | None,
    ) -> tuple[bytes, int | None]:
        """An ``/infer`` body in, the response body out, with its JSON header's length when
        binary data follows it (None: all JSON)."""
        limit = self.body_limit(model)

        def read() -> InferRequest:
            # The exact bounds (the model's dimensions and batch) are the binding's; here,
            # only what no body within the limit could carry.
            with tracing.span("decode request", bytes=len(body)):
                plain = decode_body(body, encoding, limit=limit)
                return decode_request(plain, header_length, max_elements=limit)

        request = await self.dataplane.run_in_pool(read)
        classes = len(model.runtime.card.labels)
        select_outputs(request, model_tensors(model.runtime)[1], classes=classes)  # early
        max_batch = self.settings.max_images_per_request

        def bind(current: ModelVersion) -> np.ndarray:
            with tracing.span("bind input"):
                return bind_input(request, model_tensors(current.runtime)[0], max_batch=max_batch)

        served, values = await self.dataplane.infer_tensor(model, version, bind)
        tracing.annotate(model=served.runtime.name, version=served.version, images=len(values))
        wanted = select_outputs(request, model_tensors(served.runtime)[1], classes=classes)
        encode = functools.partial(self._encode, served, values, wanted, request.id)
        if values.size * len(wanted) <= INLINE_RESPONSE_VALUES:
            return encode()
        return await self.dataplane.run_in_pool(encode)

    @staticmethod
    def _encode(
        model: ModelVersion,
        values: np.ndarray,
        wanted: list[RequestedOutput],
        request_id: str | None,
    ) -> tuple[bytes, int | None]:
        with tracing.span("encode response"):
            datatype = model_tensors(model.runtime)[1][0].datatype
            outputs = []
            for out in wanted:
                if out.classification:
                    labels = model.runtime.card.labels
                    strings = classification(values, out.classification, labels)
                    outputs.append(OutputTensor(out.name, "BYTES", strings, bool(out.binary)))
                else:
                    outputs.append(OutputTensor(out.name, datatype, values, bool(out.binary)))
            return encode_response(
                model_name=model.runtime.name,
                model_version=model.version,
                request_id=request_id,
                outputs=outputs,
            )


def _metadata_tensor(spec: TensorSpec) -> MetadataTensor:
    return MetadataTensor(name=spec.name, datatype=spec.datatype, shape=list(spec.shape))
