"""TensorFlow-free client for TF Serving and the convnet-serving gateway, over HTTP and gRPC.

Public API (``from clients import ...``):

- ``Client(target, ...)`` and ``AsyncClient(target, ...)``: ``predict``, ``classify``, ``status``,
  ``metadata``, ``live``, ``ready`` for ``http://``/``https://`` (TF Serving REST, or KServe V2 with
  ``protocol="v2"``) and ``grpc://``/``grpcs://`` targets (TF Serving PredictionService).
- ``ModelMetadata``, ``SignatureInfo``, ``TensorSpec``, ``ModelVersionState``: typed results.
- ``RetryPolicy``: retries with exponential backoff on UNAVAILABLE/503 and RESOURCE_EXHAUSTED/429.
- ``Status`` and the exceptions ``ServingError``, ``InvalidInput``, ``ModelNotFound``,
  ``ServerBusy``, ``DeadlineExceeded``, ``Unavailable``, ``Unauthenticated``, ``PermissionDenied``,
  ``Conflict``, ``Unimplemented``, ``Cancelled``, ``InternalError`` (from ``clients.errors``).

Wire code for servers and tools: ``clients.codec`` (numpy <-> TensorProto), ``clients.wire``
(gRPC method paths, messages, model config messages), ``clients.v2`` (KServe V2 binary bodies),
``clients.errors`` (the status table).

``import clients`` is light: numpy, protobuf, grpc and httpx load on first use of a client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clients.errors import (
    Cancelled,
    Conflict,
    DeadlineExceeded,
    InternalError,
    InvalidInput,
    ModelNotFound,
    PermissionDenied,
    ServerBusy,
    ServingError,
    Status,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)

if TYPE_CHECKING:
    from clients.client import (
        AsyncClient,
        Client,
        ModelMetadata,
        ModelVersionState,
        RetryPolicy,
        SignatureInfo,
        TensorSpec,
    )

__all__ = [
    "AsyncClient",
    "Cancelled",
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "InternalError",
    "InvalidInput",
    "ModelMetadata",
    "ModelNotFound",
    "ModelVersionState",
    "PermissionDenied",
    "RetryPolicy",
    "ServerBusy",
    "ServingError",
    "SignatureInfo",
    "Status",
    "TensorSpec",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
]

_LAZY = {
    "AsyncClient",
    "Client",
    "ModelMetadata",
    "ModelVersionState",
    "RetryPolicy",
    "SignatureInfo",
    "TensorSpec",
}


def __getattr__(name: str) -> Any:
    # The client pulls in numpy, protobuf, httpx and grpc: load them only when a client is used.
    if name in _LAZY:
        from clients import client

        return getattr(client, name)
    raise AttributeError(f"module 'clients' has no attribute {name!r}")
