"""Request bodies and answer parsing shared by every load generator (Locust users, ``rate``).

Imports numpy, json and ``clients`` only: the locustfile loads this module after gevent's
monkey-patching, so it must not pull in requests, urllib3 or TensorFlow (docs/ARCHITECTURE.md,
known traps).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from clients import v2 as v2_wire
from clients import v2_grpc
from clients.codec import tensor_proto_to_ndarray
from clients.wire import PredictResponse, build_predict_request


def model_path_suffix(version: int | None, label: str | None, v2: bool = False) -> str:
    """``/versions/N`` or (TF Serving REST only) ``/labels/L`` after the model name."""
    if version is not None:
        return f"/versions/{version}"
    if label and not v2:
        return f"/labels/{label}"
    return ""


def rest_path(model: str, version: int | None, label: str | None) -> str:
    return f"/v1/models/{model}{model_path_suffix(version, label)}:predict"


def v2_path(model: str, version: int | None) -> str:
    return f"/v2/models/{model}{model_path_suffix(version, None, v2=True)}/infer"


def encode_rest(batch: np.ndarray, columnar: bool = False) -> bytes:
    """TF Serving REST JSON: row (``instances``) or columnar (``inputs``)."""
    key = "inputs" if columnar else "instances"
    return json.dumps({key: batch.tolist()}, separators=(",", ":")).encode()


def parse_rest(content: bytes, output_name: str = "probabilities") -> np.ndarray:
    """The output tensor of a TF Serving REST answer (row or columnar, one or named outputs)."""
    answer = json.loads(content)
    values = answer.get("predictions", answer.get("outputs"))
    if isinstance(values, dict):
        values = values[output_name]
    elif values and isinstance(values[0], dict):
        values = [row[output_name] for row in values]
    return np.asarray(values, dtype=np.float32)


def encode_v2(
    batch: np.ndarray,
    input_name: str = "image",
    output_name: str = "probabilities",
    binary: bool = True,
) -> tuple[bytes, dict[str, str]]:
    """KServe V2 ``/infer`` body and its headers (binary tensor extension by default)."""
    extra = {"outputs": v2_wire.binary_outputs_request([output_name])} if binary else None
    return v2_wire.encode_tensors("inputs", {input_name: batch}, binary=binary, extra=extra)


def parse_v2(
    content: bytes, header_length: str | int | None, output_name: str = "probabilities"
) -> np.ndarray:
    """The output tensor of a KServe V2 answer, JSON or binary."""
    tensors, _ = v2_wire.decode_tensors(
        "outputs", content, int(header_length) if header_length else None
    )
    return np.asarray(tensors[output_name])


def encode_grpc(
    batch: np.ndarray,
    model: str,
    version: int | None = None,
    label: str | None = None,
    input_name: str = "image",
) -> bytes:
    """A serialised TF Serving ``PredictRequest``."""
    request = build_predict_request(model, {input_name: batch}, version=version, label=label)
    return bytes(request.SerializeToString())


def parse_grpc(response: Any, output_name: str = "probabilities") -> np.ndarray:
    """The output tensor of a ``PredictResponse`` (a message or its serialised bytes)."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        response = PredictResponse.FromString(bytes(response))
    return tensor_proto_to_ndarray(response.outputs[output_name])


def encode_v2_grpc(
    batch: np.ndarray, model: str, version: int | None = None, input_name: str = "image"
) -> bytes:
    """A serialised KServe V2 ``ModelInferRequest`` with ``raw_input_contents``."""
    request = v2_grpc.build_infer_request(model, {input_name: batch}, version=version)
    return bytes(request.SerializeToString())


def parse_v2_grpc(response: Any, output_name: str = "probabilities") -> np.ndarray:
    """The output tensor of a ``ModelInferResponse`` (a message or its serialised bytes)."""
    if isinstance(response, (bytes, bytearray, memoryview)):
        response = v2_grpc.ModelInferResponse.FromString(bytes(response))
    return v2_grpc.infer_outputs(response)[output_name]


def served_classes(model_outputs: np.ndarray, model_to_dataset: np.ndarray) -> np.ndarray:
    """Dataset class of each answer (by the model's class names); -1 when it has none."""
    outputs = np.asarray(model_outputs)
    predicted = outputs.reshape(len(outputs), -1).argmax(axis=1)
    inside = predicted < len(model_to_dataset)
    return np.where(inside, model_to_dataset[np.minimum(predicted, len(model_to_dataset) - 1)], -1)
