"""cnnserve's inference service: ONNX Runtime models behind a FastAPI app.

Layers, each importing only those below it: ``preprocessing``, ``graph`` and ``runtime``
(no HTTP) -> ``batching`` -> ``repository`` -> ``api`` (endpoint functions and routers) ->
``app`` (``create_app``).
"""

__all__: list[str] = []
