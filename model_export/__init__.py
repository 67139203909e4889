"""Train convolutional networks in PyTorch and export them to a cnnserve model repository.

Everything that needs torch lives here; the service and the client never import it.
"""

__all__: list[str] = []
