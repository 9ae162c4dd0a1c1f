"""KServe V2 over gRPC (``inference.GRPCInferenceService``), proven with NVIDIA's own client:
``tritonclient.grpc``, unchanged, against a real ``python -m serving`` process on 127.0.0.1
serving a LeNet-like model. Answers must equal offline ONNX Runtime, with raw and with typed
contents; metadata, readiness and statistics must read as Triton's would; the service shares the
gateway's rules (API keys, admission with retry pushback, metrics under ``protocol="v2-grpc"``).

tritonclient is installed by ``make setup`` without its dependencies (see the Makefile), so these
tests run wherever the project's setup ran; they are skipped only where it is not installed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import v2_grpc
from tests.metrics_text import metric_value
from tests.serving.serving_harness import GatewayProcess
from tests.tiny_models import lenet_like, reference_predict, sample_images, write_version

grpcclient = pytest.importorskip("tritonclient.grpc")
service_pb2 = pytest.importorskip("tritonclient.grpc.service_pb2")
service_pb2_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

MODEL = "lenet"
API_KEY = "k-v2"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("v2grpc")
    write_version(root, MODEL, 1, lenet_like())
    return root


@pytest.fixture(scope="module", params=["gateway", "grpcio"])
def gateway(repo: Path, request: pytest.FixtureRequest) -> Iterator[GatewayProcess]:
    """The gateway on each gRPC transport (its own, the default; grpc.aio's)."""
    running = GatewayProcess(repo, "--grpc-transport", request.param)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def triton(gateway: GatewayProcess) -> Iterator[object]:
    client = grpcclient.InferenceServerClient(url=gateway.grpc_target)
    try:
        yield client
    finally:
        client.close()


def _expected(repo: Path, images: np.ndarray) -> np.ndarray:
    return reference_predict(repo / MODEL / "1" / "model.onnx", images)


def test_tritonclient_raw_contents_equal_offline_onnx_runtime(triton: object, repo: Path) -> None:
    images = sample_images(3, seed=36)
    image = grpcclient.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    result = triton.infer(  # type: ignore[attr-defined]
        MODEL, [image], outputs=[grpcclient.InferRequestedOutput("probabilities")], request_id="r1"
    )
    got = result.as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (3, 10)
    np.testing.assert_allclose(got, _expected(repo, images), rtol=1e-5, atol=1e-6)
    response = result.get_response()
    assert response.id == "r1" and response.model_version == "1"
    assert len(response.raw_output_contents) == 1  # raw out, as Triton answers


def test_tritonclient_typed_contents_equal_offline_onnx_runtime(
    gateway: GatewayProcess, repo: Path
) -> None:
    # tritonclient.grpc's InferInput always sends raw bytes; typed contents go through its own
    # generated stub, as any other V2 client (KServe's, MLServer's) may send them.
    images = sample_images(2, seed=37)
    request = service_pb2.ModelInferRequest(model_name=MODEL, model_version="1")
    tensor = request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
    tensor.contents.uint_contents.extend(images.ravel().tolist())
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        response = stub.ModelInfer(request, timeout=30)
    result = grpcclient.InferResult(response)
    np.testing.assert_allclose(
        result.as_numpy("probabilities"), _expected(repo, images), rtol=1e-5, atol=1e-6
    )


def test_tritonclient_reads_readiness_metadata_and_statistics(triton: object) -> None:
    client = triton
    assert client.is_server_live()  # type: ignore[attr-defined]
    assert client.is_server_ready()  # type: ignore[attr-defined]
    assert client.is_model_ready(MODEL)  # type: ignore[attr-defined]
    assert client.is_model_ready(MODEL, "1")  # type: ignore[attr-defined]
    assert not client.is_model_ready(MODEL, "7")  # type: ignore[attr-defined]
    assert not client.is_model_ready("nope")  # type: ignore[attr-defined]
    server = client.get_server_metadata(as_json=True)  # type: ignore[attr-defined]
    assert server["name"] == "convnet-serving" and "statistics" in server["extensions"]
    meta = client.get_model_metadata(MODEL, as_json=True)  # type: ignore[attr-defined]
    assert meta["name"] == MODEL and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "image", "datatype": "UINT8", "shape": ["-1", "28", "28", "1"]}
    ]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "10"]}]

    before = client.get_inference_statistics(MODEL, as_json=True)  # type: ignore[attr-defined]
    images = sample_images(4, seed=38)
    image = grpcclient.InferInput("image", list(images.shape), "UINT8")
    image.set_data_from_numpy(images)
    client.infer(MODEL, [image])  # type: ignore[attr-defined]
    after = client.get_inference_statistics(MODEL, "1", as_json=True)  # type: ignore[attr-defined]
    (stats,) = after["model_stats"]
    (old,) = before["model_stats"]
    assert stats["name"] == MODEL and stats["version"] == "1"
    # JSON of uint64 fields: strings; absent when zero.
    count = lambda entry, key: int(entry.get(key, 0))  # noqa: E731
    assert count(stats, "inference_count") == count(old, "inference_count") + 4
    assert count(stats, "execution_count") >= count(old, "execution_count") + 1
    success = stats["inference_stats"]["success"]
    assert (
        int(success["count"]) == int(old["inference_stats"].get("success", {}).get("count", 0)) + 1
    )
    assert int(success["ns"]) > 0
    assert int(stats["last_inference"]) > 0
    # the queue and the three compute phases are measured, per request, since the batcher counts
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        duration = stats["inference_stats"][phase]
        assert int(duration["count"]) >= 1 and int(duration["ns"]) > 0, phase
    assert sum(int(b["compute_infer"]["count"]) for b in stats["batch_stats"]) == count(
        stats, "execution_count"
    )
    everything = client.get_inference_statistics(as_json=True)  # type: ignore[attr-defined]
    assert [s["name"] for s in everything["model_stats"]] == [MODEL]
    with pytest.raises(InferenceServerException) as refused:
        client.get_inference_statistics("nope")  # type: ignore[attr-defined]
    assert refused.value.status() == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException) as refused:
        client.get_model_config(MODEL)  # type: ignore[attr-defined]
    assert refused.value.status() == "StatusCode.UNIMPLEMENTED"  # not served: said so


def test_v2_grpc_requests_are_counted_under_their_own_protocol(
    triton: object, gateway: GatewayProcess
) -> None:
    import httpx

    def counted(status: str) -> float:
        text = httpx.get(f"{gateway.http_url}/metrics", timeout=10).text
        return metric_value(text, "serving_requests_total", protocol="v2-grpc", status=status)

    ok, bad = counted("OK"), counted("INVALID_ARGUMENT")
    image = grpcclient.InferInput("image", [1, 28, 28, 1], "UINT8")
    image.set_data_from_numpy(sample_images(1, seed=39))
    triton.infer(MODEL, [image])  # type: ignore[attr-defined]
    wrong = grpcclient.InferInput("image", [1, 28, 28, 1], "FP32")
    wrong.set_data_from_numpy(np.zeros((1, 28, 28, 1), np.float32))
    with pytest.raises(InferenceServerException) as refused:
        triton.infer(MODEL, [wrong])  # type: ignore[attr-defined]
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert counted("OK") == ok + 1
    assert counted("INVALID_ARGUMENT") == bad + 1


def test_api_keys_guard_the_v2_service_but_not_its_health(repo: Path) -> None:
    running = GatewayProcess(repo, "--api-keys", API_KEY)
    try:
        client = grpcclient.InferenceServerClient(url=running.grpc_target)
        try:
            assert client.is_server_live() and client.is_server_ready()
            with pytest.raises(InferenceServerException) as refused:
                client.get_model_metadata(MODEL)
            assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
            meta = client.get_model_metadata(MODEL, headers={"x-api-key": API_KEY})
            assert meta.name == MODEL
        finally:
            client.close()
    finally:
        running.stop()


def test_our_client_messages_match_tritonclients_on_the_wire() -> None:
    images = sample_images(1, seed=40)
    ours = v2_grpc.build_infer_request(MODEL, {"image": images}, version=1, raw=False)
    theirs = service_pb2.ModelInferRequest.FromString(ours.SerializeToString())
    assert list(theirs.inputs[0].contents.uint_contents) == images.ravel().tolist()
    assert theirs.model_version == "1" and theirs.inputs[0].datatype == "UINT8"
