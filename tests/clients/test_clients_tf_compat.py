"""Wire compatibility with the stock tensorflow-serving-api, both ways, in one process.

These tests import TensorFlow (seconds), so they live in one module that imports it once.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
from tensorflow.core.framework import tensor_pb2 as tf_tensor_pb2  # noqa: E402
from tensorflow.core.framework import tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow.core.protobuf import meta_graph_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import (  # noqa: E402
    file_system_storage_path_source_pb2,
    model_server_config_pb2,
)

import clients  # noqa: E402
from clients import Client, ModelNotFound, Status, codec, wire  # noqa: E402
from clients.proto import (  # noqa: E402
    metadata_pb2,
    model_status_pb2,
    tensor_pb2,
)
from clients.proto import model_server_config_pb2 as our_config_pb2  # noqa: E402
from clients.proto import predict_pb2 as our_predict_pb2  # noqa: E402
from tests.clients.gateways import MODEL, reference  # noqa: E402
from tests.serving.serving_harness import RunningGateway  # noqa: E402
from tests.tiny_models import sample_images  # noqa: E402

DTYPES = [np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64, np.bool_]
POLICY = file_system_storage_path_source_pb2.FileSystemStoragePathSourceConfig.ServableVersionPolicy

# (ours, theirs): every field we define must have TF Serving's number, type and packing.
MESSAGE_PAIRS = [
    (tensor_pb2.TensorProto, tf_tensor_pb2.TensorProto),
    (tensor_pb2.TensorShapeProto, tensor_shape_pb2.TensorShapeProto),
    (tensor_pb2.TensorShapeProto.Dim, tensor_shape_pb2.TensorShapeProto.Dim),
    (our_predict_pb2.ModelSpec, model_pb2.ModelSpec),
    (our_predict_pb2.PredictRequest, predict_pb2.PredictRequest),
    (our_predict_pb2.PredictResponse, predict_pb2.PredictResponse),
    (metadata_pb2.TensorInfo, meta_graph_pb2.TensorInfo),
    (metadata_pb2.SignatureDef, meta_graph_pb2.SignatureDef),
    (metadata_pb2.SignatureDefMap, get_model_metadata_pb2.SignatureDefMap),
    (metadata_pb2.GetModelMetadataRequest, get_model_metadata_pb2.GetModelMetadataRequest),
    (metadata_pb2.GetModelMetadataResponse, get_model_metadata_pb2.GetModelMetadataResponse),
    (model_status_pb2.StatusProto, status_pb2.StatusProto),
    (model_status_pb2.GetModelStatusRequest, get_model_status_pb2.GetModelStatusRequest),
    (model_status_pb2.ModelVersionStatus, get_model_status_pb2.ModelVersionStatus),
    (model_status_pb2.GetModelStatusResponse, get_model_status_pb2.GetModelStatusResponse),
    (our_config_pb2.ModelServerConfig, model_server_config_pb2.ModelServerConfig),
    (our_config_pb2.ModelConfigList, model_server_config_pb2.ModelConfigList),
    (our_config_pb2.ModelConfig, model_server_config_pb2.ModelConfig),
    (our_config_pb2.ServableVersionPolicy, POLICY),
    (our_config_pb2.ServableVersionPolicy.Latest, POLICY.Latest),
    (our_config_pb2.ServableVersionPolicy.Specific, POLICY.Specific),
]


def test_both_packages_import_in_one_process() -> None:
    assert clients.Client is Client
    assert predict_pb2.PredictRequest.DESCRIPTOR.full_name == "tensorflow.serving.PredictRequest"
    assert wire.PredictRequest.DESCRIPTOR.full_name == "convnet_serving.PredictRequest"


@pytest.mark.parametrize(("ours", "theirs"), MESSAGE_PAIRS, ids=lambda m: m.DESCRIPTOR.name)
def test_our_fields_match_tf_serving_field_numbers_and_types(ours: Any, theirs: Any) -> None:
    for field in ours.DESCRIPTOR.fields:
        stock = theirs.DESCRIPTOR.fields_by_name[field.name]
        assert (field.number, field.type, field.is_repeated, field.is_packed) == (
            stock.number,
            stock.type,
            stock.is_repeated,
            stock.is_packed,
        ), field.full_name


def test_enums_match_tf_numbers() -> None:
    for value in tensor_pb2.DataType.DESCRIPTOR.values:
        assert types_pb2.DataType.Value(value.name) == value.number
    for value in model_status_pb2.ModelVersionStatus.State.DESCRIPTOR.values:
        assert get_model_status_pb2.ModelVersionStatus.State.Value(value.name) == value.number


def _sample(dtype: Any) -> np.ndarray:
    values = np.arange(-3, 9).reshape(3, 4) if dtype not in (np.uint8, np.bool_) else np.arange(12)
    return (
        (values.reshape(3, 4) % 2 == 0) if dtype is np.bool_ else values.reshape(3, 4).astype(dtype)
    )


@pytest.mark.parametrize("dtype", [*DTYPES, "string"], ids=str)
def test_our_codec_decodes_tf_make_tensor_proto(dtype: Any) -> None:
    array = (
        np.array([[b"a", b""], [b"\xff\x00", "é".encode()]], dtype=object)
        if dtype == "string"
        else _sample(dtype)
    )
    stock = tf.make_tensor_proto(array)
    decoded = codec.tensor_proto_to_ndarray(
        tensor_pb2.TensorProto.FromString(stock.SerializeToString())
    )
    assert decoded.dtype == (np.dtype(object) if dtype == "string" else np.dtype(dtype))
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize("dtype", [*DTYPES, "string"], ids=str)
def test_tf_make_ndarray_decodes_our_codec(dtype: Any) -> None:
    array = np.array([b"x", b"yz", b""], dtype=object) if dtype == "string" else _sample(dtype)
    ours = codec.ndarray_to_tensor_proto(array)
    decoded = tf.make_ndarray(tf_tensor_pb2.TensorProto.FromString(ours.SerializeToString()))
    np.testing.assert_array_equal(decoded, array)


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        (tf.float32, 1.5),
        (tf.int32, 7),
        (tf.int64, -2),
        (tf.float16, 0.5),
        (tf.bool, True),
        (tf.string, b"s"),
    ],
)
def test_our_codec_decodes_typed_value_fields_from_tf(dtype: Any, value: Any) -> None:
    # A scalar fill with a shape makes TensorFlow write a single typed *_val, not tensor_content.
    stock = tf.make_tensor_proto(value, dtype=dtype, shape=[2, 3])
    assert not stock.tensor_content
    decoded = codec.tensor_proto_to_ndarray(
        tensor_pb2.TensorProto.FromString(stock.SerializeToString())
    )
    np.testing.assert_array_equal(decoded, tf.make_ndarray(stock))


def test_model_config_text_parses_like_tf_serving() -> None:
    from google.protobuf import text_format

    text = """
    model_config_list {
      config {
        name: "lenet"  base_path: "/models/lenet"  model_platform: "tensorflow"
        model_version_policy { specific { versions: 1 versions: 2 } }
        version_labels { key: "stable" value: 1 }
        version_labels { key: "canary" value: 2 }
      }
      config { name: "resnet" base_path: "/models/resnet" model_platform: "tensorflow"
               model_version_policy { latest { num_versions: 2 } } }
    }
    """
    ours = text_format.Parse(text, wire.ModelServerConfig())
    theirs = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )
    assert dict(ours.model_config_list.config[0].version_labels) == {"stable": 1, "canary": 2}


# --- gRPC, both directions ---------------------------------------------------------------------


class StockPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """A server built from the stock stubs; it decodes with tf.make_ndarray."""

    def __init__(self) -> None:
        self.received: dict[str, np.ndarray] = {}
        self.specs: list[Any] = []

    def Predict(self, request: Any, context: Any) -> Any:
        self.specs.append(request.model_spec)
        if request.model_spec.name != "stock":
            context.abort(grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(x)")
        self.received = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        response = predict_pb2.PredictResponse()
        response.outputs["doubled"].CopyFrom(
            tf.make_tensor_proto(self.received["image"].astype(np.float32) * 2)
        )
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        signatures = get_model_metadata_pb2.SignatureDefMap()
        sig = signatures.signature_def["serving_default"]
        sig.inputs["image"].name = "serving_default_image:0"
        sig.inputs["image"].dtype = types_pb2.DT_UINT8
        for size in (-1, 28, 28, 1):
            sig.inputs["image"].tensor_shape.dim.add(size=size)
        sig.outputs["doubled"].dtype = types_pb2.DT_FLOAT
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = 3
        response.metadata["signature_def"].Pack(signatures)  # the stock type URL
        return response


class StockModelService(model_service_pb2_grpc.ModelServiceServicer):
    def GetModelStatus(self, request: Any, context: Any) -> Any:
        response = get_model_status_pb2.GetModelStatusResponse()
        entry = response.model_version_status.add(version=3)
        entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        return response


@pytest.fixture(scope="module")
def stock_server() -> Iterator[tuple[str, StockPredictionService]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction = StockPredictionService()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(StockModelService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"grpc://127.0.0.1:{port}", prediction
    server.stop(grace=None)


def test_stock_server_decodes_our_predict_request(stock_server: tuple[str, Any]) -> None:
    target, service = stock_server
    batch = np.random.default_rng(0).integers(0, 256, size=(64, 28, 28, 1), dtype=np.uint8)
    with Client(target) as client:
        result = client.predict("stock", {"image": batch}, version=3)
        bare = client.predict("stock", batch, label="stable")  # input name from the stock metadata
        metadata = client.metadata("stock")
        states = client.status("stock")
        with pytest.raises(ModelNotFound) as missing:
            client.predict("nope", {"image": batch})
    np.testing.assert_array_equal(service.received["image"], batch)
    assert service.specs[0].version.value == 3
    assert service.specs[1].version_label == "stable"
    assert service.specs[1].signature_name == "serving_default"
    np.testing.assert_array_equal(result, batch.astype(np.float32) * 2)
    np.testing.assert_array_equal(bare, batch.astype(np.float32) * 2)
    assert metadata.version == 3
    assert metadata.signature().inputs["image"].shape == (-1, 28, 28, 1)
    assert metadata.signature().inputs["image"].dtype == "uint8"
    assert states[0].version == 3 and states[0].available
    assert missing.value.status is Status.NOT_FOUND


def test_stock_stub_client_reads_our_gateway(gateway: RunningGateway, repository: Path) -> None:
    """TF Serving's own generated stubs and TensorFlow's tensor helpers against the real gateway."""
    batch = sample_images(3, seed=11)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch))
        response = stub.Predict(request, timeout=10)
        np.testing.assert_allclose(
            tf.make_ndarray(response.outputs["probabilities"]),
            reference(repository, MODEL, 2, batch),
            rtol=1e-5,
            atol=1e-7,
        )

        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"]
        )
        metadata_request.model_spec.name = MODEL
        metadata = stub.GetModelMetadata(metadata_request, timeout=10)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert metadata.metadata["signature_def"].Unpack(signatures)  # our Any, their type
        assert (
            signatures.signature_def["serving_default"].inputs["image"].dtype == types_pb2.DT_UINT8
        )

        status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = MODEL
        status = status_stub.GetModelStatus(status_request, timeout=10)
        assert {entry.version for entry in status.model_version_status} == {1, 2}
        assert all(
            entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
            for entry in status.model_version_status
        )
