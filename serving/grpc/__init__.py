"""gRPC transport: TF Serving's PredictionService and ModelService, plus grpc.health.v1."""

from serving.grpc.server import build_grpc_server

__all__ = ["build_grpc_server"]
