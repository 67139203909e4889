"""The HTTP layer: wire schemas, endpoint functions, routers, middleware, error handlers."""

__all__: list[str] = []
