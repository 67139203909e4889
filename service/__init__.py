"""cnnserve's inference service: ONNX Runtime models behind a FastAPI app.

Layers, each importing only those below it:

- ``preprocessing``, ``graph`` (layers and receptive fields), ``runtime`` (sessions and
  providers), ``v2`` (the Open Inference Protocol without HTTP) and ``visualize``: no HTTP;
- ``batching`` -> ``repository`` (models on disk, versions, load and unload);
- ``dataplane``: classification, feature maps and tensor inference, still no HTTP;
- ``api``: wire schemas, endpoint functions, routers, middleware and error handlers;
- ``app``: ``create_app(settings)``; ``server`` and ``cli`` run it under uvicorn.

Domain errors live in ``errors`` with the one table that maps them to HTTP statuses.
"""

__all__: list[str] = []
