"""TF Serving gRPC compatibility: the stock tensorflow-serving-api stubs call the gateway, on
both gRPC transports (the gateway's own, the default, and ``--grpc-transport grpcio``), and our
own client works over every transport."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serving.serving_harness import RunningGateway, gateway_settings, wait_until
from tests.tiny_models import reference_predict, sample_images

MODEL = "tiny"


def reference(repo: Path, version: int, images: np.ndarray) -> np.ndarray:
    return reference_predict(repo / MODEL / str(version) / "model.onnx", images)


@pytest.fixture(scope="module", params=["gateway", "grpcio"])
def channel(request: pytest.FixtureRequest, tiny_repo: Path) -> Iterator[grpc.Channel]:
    """A channel to a gateway on each gRPC transport."""
    running = RunningGateway(gateway_settings(tiny_repo, grpc_transport=request.param)).start()
    try:
        with grpc.insecure_channel(running.grpc_target) as chan:
            yield chan
    finally:
        running.stop()


def test_stock_stubs_predict_metadata_status(channel: grpc.Channel, tiny_repo: Path) -> None:
    tf = pytest.importorskip("tensorflow")
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    images = sample_images(4, seed=11)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = "serving_default"
    request.inputs["image"].CopyFrom(tf.make_tensor_proto(images))
    response = stub.Predict(request, timeout=10)
    probabilities = tf.make_ndarray(response.outputs["probabilities"])
    np.testing.assert_allclose(probabilities, reference(tiny_repo, 2, images), rtol=1e-6)
    assert response.model_spec.version.value == 2

    # Version by label and by number; output_filter.
    request.model_spec.version_label = "stable"
    request.output_filter.append("probabilities")
    response = stub.Predict(request, timeout=10)
    assert response.model_spec.version.value == 1
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]),
        reference(tiny_repo, 1, images),
        rtol=1e-6,
    )
    request.model_spec.version.value = 2
    assert stub.Predict(request, timeout=10).model_spec.version.value == 2

    meta_request = get_model_metadata_pb2.GetModelMetadataRequest()
    meta_request.model_spec.name = MODEL
    meta_request.metadata_field.append("signature_def")
    meta = stub.GetModelMetadata(meta_request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert meta.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    assert signature.inputs["image"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in signature.inputs["image"].tensor_shape.dim] == [-1, 28, 28, 1]
    assert signature.method_name == "tensorflow/serving/predict"
    # The extra class_names entry unpacks with protobuf's own ListValue, no code of ours needed.
    labels = struct_pb2.ListValue()
    assert meta.metadata["class_names"].Unpack(labels)
    assert [value.string_value for value in labels.values] == [f"class_{i}" for i in range(10)]
    meta_request.metadata_field[:] = ["class_names"]
    only_labels = stub.GetModelMetadata(meta_request, timeout=10)
    assert list(only_labels.metadata) == ["class_names"]

    status_stub = model_service_pb2_grpc.ModelServiceStub(channel)
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = MODEL
    status = status_stub.GetModelStatus(status_request, timeout=10)
    assert sorted((s.version, s.state) for s in status.model_version_status) == [(1, 30), (2, 30)]

    # Errors carry TF Serving's codes.
    request.model_spec.name = "missing"
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "model 'missing' not found" in caught.value.details()


def test_grpc_health_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tensorflow.serving.PredictionService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as caught:
        health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    # Watch streams the status now (and at every change): its first answer, then cancelled.
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()
    unknown = health.Watch(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert next(unknown).status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
    unknown.cancel()


def test_watch_sees_the_drain_and_does_not_hold_it_up(tiny_repo: Path) -> None:
    """A health Watch on the gateway's transport hears NOT_SERVING when the gateway drains, and
    the drain does not wait its whole timeout (10 s here) for the stream: it ends with the
    connection."""
    import time

    running = RunningGateway(gateway_settings(tiny_repo)).start()
    try:
        with grpc.insecure_channel(running.grpc_target) as chan:
            watch = health_pb2_grpc.HealthStub(chan).Watch(
                health_pb2.HealthCheckRequest(service=""), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            started = time.monotonic()
            running.stop()
            drained_in = time.monotonic() - started
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.RpcError):  # then the stream ends with the connection
                next(watch)
    finally:
        running.stop()
    assert drained_in < 5, f"the drain took {drained_in:.1f} s"


@pytest.mark.parametrize("transport", ["rest", "v2", "grpc"])
def test_our_client_over_every_transport(
    gateway: RunningGateway, tiny_repo: Path, transport: str
) -> None:
    from clients import Client

    target = f"grpc://{gateway.grpc_target}" if transport == "grpc" else gateway.http_url
    protocol = "v2" if transport == "v2" else None
    images = sample_images(3, seed=12)
    with Client(target, protocol=protocol, timeout=10) as client:
        probabilities = client.predict(MODEL, images, version=1)
        np.testing.assert_allclose(
            np.asarray(probabilities), reference(tiny_repo, 1, images), rtol=1e-6
        )
        assert client.ready(MODEL)
        assert any(state.available for state in client.status(MODEL))
        top = client.classify(MODEL, list(images[:1]), top_k=2)
        expected = reference(tiny_repo, 2, images[:1])[0]
        assert top[0][0][1] == pytest.approx(float(expected.max()), rel=1e-5)


def test_version_states_are_tf_servings_numbers() -> None:
    """The one hand-written table of states, held to TF Serving's own proto enum."""
    from clients import wire
    from serving.lifecycle import VersionState

    for state in VersionState:
        assert state.value == wire.ModelVersionStatus.State.Value(state.name), state


@pytest.mark.parametrize("refusal", ["unknown model", "bad tensor"])
def test_a_refused_call_frees_its_request_without_the_garbage_collector(
    channel: grpc.Channel, refusal: str
) -> None:
    """A refused call's request (its bytes, the parsed message, decode buffers) is freed when
    the call ends. Ending it with grpc's abort() kept an error whose traceback held the request's
    frames in a reference cycle with the call, so only the cyclic garbage collector, whenever it
    ran, gave the memory back. Checked with that collector off: after eight refused 8 MiB
    calls, what stays allocated falls below one of them (the last is freed as grpc finishes its
    call, just after the client has the answer)."""
    from clients import wire

    size = 8 * 1024 * 1024
    tensor = wire.TensorProto(dtype=wire.DataType.DT_UINT8, tensor_content=bytes(size))
    if refusal == "bad tensor":  # parsed, then refused by the input checks (rank 1, not 4)
        tensor.tensor_shape.dim.add(size=size)
    model, code = (
        ("unknown", grpc.StatusCode.NOT_FOUND)
        if refusal == "unknown model"
        else (MODEL, grpc.StatusCode.INVALID_ARGUMENT)
    )
    message = wire.PredictRequest(
        model_spec=wire.model_spec(model), inputs={"image": tensor}
    ).SerializeToString()
    call = channel.unary_unary(wire.PREDICT_METHOD)
    gc.collect()
    gc.disable()
    tracemalloc.start()
    try:
        for _ in range(8):
            with pytest.raises(grpc.RpcError) as failure:
                call(message, timeout=30)
            assert failure.value.code() == code, failure.value
        kept: list[int] = []

        def freed() -> bool:
            kept.append(tracemalloc.get_traced_memory()[0])
            return kept[-1] < size

        with contextlib.suppress(AssertionError):  # the assertion below says how much is kept
            wait_until(freed, timeout_s=5)
    finally:
        tracemalloc.stop()
        gc.enable()
    assert kept[-1] < size, f"{kept[-1] / 2**20:.1f} MiB still allocated after 8 refused calls"
