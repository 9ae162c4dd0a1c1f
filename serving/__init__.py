"""serving: the ONNX Runtime gateway (TF Serving REST and gRPC, KServe V2)."""

#: The gateway's version, as its OpenAPI document and KServe V2 server metadata report it.
__version__ = "0.1.0"
