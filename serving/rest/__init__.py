"""HTTP transport: FastAPI app with TF Serving REST, KServe V2, image, metrics and docs routes."""

from serving.rest.app import create_app

__all__ = ["create_app"]
