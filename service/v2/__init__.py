"""The Open Inference Protocol (KServe V2) without HTTP: tensors, requests, binding, the plane.

- ``tensors``: one tensor's datatypes and its JSON and binary forms;
- ``wire``: whole requests and responses (structure checked, values converted on demand);
- ``binding``: a model's tensors as the protocol sees them, inputs checked and converted,
  outputs selected, Triton's classification extension;
- ``schemas``: the pydantic models of the protocol's JSON documents;
- ``plane``: metadata, configuration and inference on the data plane.

``service.api.v2`` maps HTTP to ``plane``, and nothing more.
"""

__all__: list[str] = []
