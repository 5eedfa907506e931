"""The online service: FastAPI app, settings, history store, micro-batching, metrics, ``ld4mrec-serve``."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ld4mrec-service")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
