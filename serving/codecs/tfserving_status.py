"""TF Serving's model status and model metadata, built once for both transports.

gRPC (``GetModelStatus``, ``GetModelMetadata``) sends these messages; REST (``GET /v1/models/...``
and ``.../metadata``) sends their JSON mapping, as TF Serving's own REST API does: protobuf's JSON
with proto field names and every field printed, so ``"version": "1"`` (int64 as a string),
``"state": "AVAILABLE"`` and ``"error_message": ""`` appear exactly as TF Serving writes them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

from clients import wire
from clients.codec import tf_dtype
from serving.lifecycle import VersionState
from serving.runtimes.base import TensorSpec


def status_response(versions: Iterable[tuple[int, VersionState, str | None]]) -> Any:
    """``GetModelStatusResponse`` for (version, state, load error or None) entries."""
    response = wire.GetModelStatusResponse()
    for version, state, error in versions:
        status = response.model_version_status.add(version=version, state=state.value)
        status.status.error_code = wire.ErrorCode.Value("UNKNOWN") if error else 0
        status.status.error_message = error or ""
    return response


def signature_def_map(inputs: list[TensorSpec], outputs: list[TensorSpec]) -> Any:
    """A model's one signature (``serving_default``) as a TensorFlow ``SignatureDefMap``."""
    signature = wire.SignatureDef(method_name=wire.PREDICT_SIGNATURE_METHOD)
    for specs, target in ((inputs, signature.inputs), (outputs, signature.outputs)):
        for spec in specs:
            info = target[spec.name]
            info.name = spec.name
            info.dtype = tf_dtype(spec.dtype)  # type: ignore[assignment]
            for dim in spec.shape:
                info.tensor_shape.dim.add(size=dim)
    signatures = wire.SignatureDefMap()
    signatures.signature_def[wire.DEFAULT_SIGNATURE].CopyFrom(signature)
    return signatures


def model_spec(name: str, version: int) -> Any:
    """The ``model_spec`` a metadata answer names: the model and the version that answered."""
    spec = wire.ModelSpec(name=name)
    spec.version.value = version
    return spec


def as_json(message: Any) -> dict[str, Any]:
    """A message as TF Serving's REST API writes it."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
