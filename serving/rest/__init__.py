"""HTTP transport: the front door (auth, limits, hot routes) over a FastAPI app with the TF
Serving REST, KServe V2, image, metrics and docs routes."""

from serving.rest.app import create_app, create_front

__all__ = ["create_app", "create_front"]
