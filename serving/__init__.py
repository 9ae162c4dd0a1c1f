"""serving: the ONNX Runtime gateway (TF Serving REST and gRPC, KServe V2)."""

from importlib import metadata

try:
    #: The project's version, written once in pyproject.toml; reported by the OpenAPI document
    #: and KServe V2 server metadata.
    __version__ = metadata.version("convnet-serving")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
