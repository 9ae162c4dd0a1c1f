"""Malformed requests over REST and gRPC each get the documented status and a message naming the
problem; the server stays healthy afterwards. Also API keys and 500s with a request id."""

from __future__ import annotations

import base64
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from clients import wire
from tests.serving.serving_harness import (
    RunningGateway,
    gateway_settings,
    predict_call,
    requests_total,
)
from tests.tiny_models import (
    batch_one_classifier,
    linear_classifier,
    sample_images,
    write_models_config,
    write_version,
)

MODEL = "tiny"
MAX_BODY = 1024 * 1024
MAX_BATCH = 8
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"


@pytest.fixture(scope="module")
def strict_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root = tmp_path_factory.mktemp("repo")
    write_version(root, MODEL, 1, linear_classifier(seed=1))
    write_version(root, "one", 1, batch_one_classifier())
    write_models_config(root, [MODEL, "one"], labels={MODEL: {"stable": 1}})
    # max_batch_size=1: warmup runs batch 1 only, so the "one" model loads; with splitting off a
    # 2-row request runs whole, and fails.
    settings = gateway_settings(
        root,
        max_body_bytes=MAX_BODY,
        max_request_batch=MAX_BATCH,
        max_batch_size=1,
        split_large_requests=False,
    )
    running = RunningGateway(settings).start()
    yield running
    running.stop()


def image_rows(count: int) -> list[Any]:
    return sample_images(count).tolist()


def png_bytes() -> bytes:
    out = io.BytesIO()
    Image.fromarray(sample_images(1)[0][:, :, 0]).save(out, format="PNG")
    return out.getvalue()


def v2_body(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8", "data": [0] * 784}
    tensor.update(overrides)
    return {"inputs": [tensor]}


V2_BINARY_HEADER = json.dumps(v2_body(parameters={"binary_data_size": 784}, data=None)).encode()

# (case id, method, path, request kwargs, expected status, words the message must contain)
REST_CASES: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    ("bad-json", "POST", PREDICT, {"content": b'{"instances": [1,'}, 400, "malformed JSON"),
    ("empty-body", "POST", PREDICT, {"content": b""}, 400, "body is empty"),
    ("json-not-object", "POST", PREDICT, {"json": [1, 2]}, 400, "JSON object"),
    ("both-instances-and-inputs", "POST", PREDICT, {"json": {"instances": [], "inputs": []}}, 400, "both 'instances' and 'inputs'"),
    ("neither-instances-nor-inputs", "POST", PREDICT, {"json": {"signature_name": "serving_default"}}, 400, "needs 'instances'"),
    ("wrong-shape", "POST", PREDICT, {"json": {"instances": [[1, 2, 3]]}}, 400, "expects shape [-1, 28, 28, 1], received [1, 3]"),
    ("wrong-dtype-float", "POST", PREDICT, {"json": {"instances": (sample_images(1) / 2).tolist()}}, 400, "expects uint8, got float"),
    ("out-of-range", "POST", PREDICT, {"json": {"instances": [[[[300]] * 28] * 28]}}, 400, "uint8 in [0, 255]"),
    ("string-values", "POST", PREDICT, {"json": {"instances": [[[["a"]] * 28] * 28]}}, 400, "got string values"),
    ("ragged", "POST", PREDICT, {"json": {"instances": [[1, 2], [3]]}}, 400, "ragged"),
    ("empty-batch", "POST", PREDICT, {"json": {"instances": []}}, 400, "'instances' is empty"),
    ("empty-columnar-batch", "POST", PREDICT, {"json": {"inputs": np.zeros((0, 28, 28, 1), int).tolist()}}, 400, "empty batch"),
    ("batch-too-large", "POST", PREDICT, {"json": {"instances": image_rows(MAX_BATCH + 1)}}, 400, f"limit is {MAX_BATCH} per request"),
    ("body-too-large", "POST", PREDICT, {"content": b" " * (MAX_BODY + 10)}, 413, "exceeds the limit"),
    ("invalid-base64", "POST", PREDICT, {"json": {"instances": [{"b64": "%%%not-base64"}]}}, 400, "invalid base64"),
    ("b64-wrong-size", "POST", PREDICT, {"json": {"instances": [{"b64": base64.b64encode(b"abc").decode()}]}}, 400, "784 raw bytes"),
    ("unknown-model", "POST", "/v1/models/nope:predict", {"json": {"instances": image_rows(1)}}, 404, "model 'nope' not found"),
    ("unknown-version", "POST", f"/v1/models/{MODEL}/versions/9:predict", {"json": {"instances": image_rows(1)}}, 404, "version 9 of model 'tiny' not found"),
    ("unknown-label", "POST", f"/v1/models/{MODEL}/labels/gold:predict", {"json": {"instances": image_rows(1)}}, 404, "label 'gold' of model 'tiny' not found"),
    ("non-integer-version", "GET", f"/v1/models/{MODEL}/versions/abc", {}, 400, "version 'abc' is not an integer"),
    ("unknown-signature", "POST", PREDICT, {"json": {"signature_name": "other", "instances": image_rows(1)}}, 400, "signature 'other' not found"),
    ("unknown-input", "POST", PREDICT, {"json": {"inputs": {"pixels": image_rows(1)}}}, 400, "unknown input 'pixels'"),
    ("bad-timeout-header", "POST", PREDICT, {"json": {"instances": image_rows(1)}, "headers": {"x-request-timeout-ms": "soon"}}, 400, "x-request-timeout-ms"),
    ("unknown-route", "GET", "/v1/nothing/here", {}, 404, "Not Found"),
    ("corrupt-image", "POST", f"/v1/models/{MODEL}:classify_image", {"content": b"\x89PNG\r\n\x1a\nbroken"}, 400, "cannot decode image"),
    ("empty-image", "POST", f"/v1/models/{MODEL}:classify_image", {"content": b""}, 400, "image is empty"),
    ("not-an-image", "POST", f"/v1/models/{MODEL}:classify_image", {"content": b"GIF89a...."}, 400, "cannot decode image"),
    ("multipart-without-file", "POST", f"/v1/models/{MODEL}:classify_image", {"data": {"note": "x"}, "files": {"dummy": ("", b"", "text/plain")}}, 400, "no file part"),
    ("top-k-zero", "POST", f"/v1/models/{MODEL}:classify_image?top_k=0", {"content": png_bytes()}, 400, "top_k must be at least 1"),
    ("v2-no-inputs", "POST", INFER, {"json": {"inputs": []}}, 400, "non-empty 'inputs'"),
    ("v2-wrong-datatype", "POST", INFER, {"json": v2_body(datatype="FP32", data=[0.5] * 784)}, 400, "expects dtype uint8, received float32"),
    ("v2-unknown-datatype", "POST", INFER, {"json": v2_body(datatype="FP128")}, 400, "unknown datatype 'FP128'"),
    ("v2-count-mismatch", "POST", INFER, {"json": v2_body(data=[1, 2, 3])}, 400, "'data' has 3 elements, shape [1, 28, 28, 1] needs 784"),
    ("v2-bad-shape", "POST", INFER, {"json": v2_body(shape=[1, "a"])}, 400, "'shape' must be a list"),
    ("v2-binary-overrun", "POST", INFER, {"content": V2_BINARY_HEADER + b"\0" * 10,
                                          "headers": {"Inference-Header-Content-Length": str(len(V2_BINARY_HEADER))}}, 400, "binary_data_size 784 exceeds the 10"),
    ("v2-header-length-too-big", "POST", INFER, {"content": b"{}", "headers": {"Inference-Header-Content-Length": "99"}}, 400, "Inference-Header-Content-Length 99"),
    ("v2-unknown-output", "POST", INFER, {"json": {**v2_body(), "outputs": [{"name": "logits"}]}}, 400, "unknown output 'logits'"),
    ("v2-unknown-model", "GET", "/v2/models/nope/ready", {}, 404, "model 'nope' not found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "words"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
def test_rest_malformed_request(
    strict_gateway: RunningGateway,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    words: str,
) -> None:
    with httpx.Client(base_url=strict_gateway.http_url, timeout=10) as http:
        reply = http.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    message = reply.json()["error"]
    assert words in message, message
    assert "Traceback" not in message


def _rpc(channel: grpc.Channel, method: str, request: Any) -> Any:
    types = wire.METHODS[method]
    call = channel.unary_unary(
        method,
        request_serializer=types.request_type.SerializeToString,
        response_deserializer=types.response_type.FromString,
    )
    return call(request, timeout=10)


def _predict(model: str = MODEL, **fields: Any) -> Any:
    inputs = fields.pop("inputs", {"image": sample_images(1)})
    return wire.build_predict_request(model, inputs, **fields)


def _bad_content() -> Any:
    request = _predict()
    request.inputs["image"].tensor_content = b"\x00" * 10
    return request


GRPC_CASES: list[tuple[str, str, Any, grpc.StatusCode, str]] = [
    ("unknown-model", wire.PREDICT_METHOD, _predict("nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("unknown-version", wire.PREDICT_METHOD, _predict(version=7), grpc.StatusCode.NOT_FOUND, "version 7 of model 'tiny' not found"),
    ("unknown-label", wire.PREDICT_METHOD, _predict(label="gold"), grpc.StatusCode.NOT_FOUND, "label 'gold'"),
    ("wrong-dtype", wire.PREDICT_METHOD, _predict(inputs={"image": np.zeros((1, 28, 28, 1), np.float32)}), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype uint8, received float32"),
    ("wrong-shape", wire.PREDICT_METHOD, _predict(inputs={"image": np.zeros((1, 28, 28), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT, "received [1, 28, 28]"),
    ("empty-batch", wire.PREDICT_METHOD, _predict(inputs={"image": np.zeros((0, 28, 28, 1), np.uint8)}), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("batch-too-large", wire.PREDICT_METHOD, _predict(inputs={"image": sample_images(MAX_BATCH + 1)}), grpc.StatusCode.INVALID_ARGUMENT, f"limit is {MAX_BATCH}"),
    ("content-size-mismatch", wire.PREDICT_METHOD, _bad_content(), grpc.StatusCode.INVALID_ARGUMENT, "tensor_content has 10 bytes"),
    ("missing-input", wire.PREDICT_METHOD, _predict(inputs={}), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'image'"),
    ("unknown-input", wire.PREDICT_METHOD, _predict(inputs={"image": sample_images(1), "extra": sample_images(1)}), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'extra'"),
    ("unknown-output-filter", wire.PREDICT_METHOD, _predict(output_filter=["logits"]), grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
    ("unknown-signature", wire.PREDICT_METHOD, _predict(signature="classify"), grpc.StatusCode.INVALID_ARGUMENT, "signature 'classify' not found"),
    ("too-large", wire.PREDICT_METHOD, _predict(inputs={"image": np.zeros((2000, 28, 28, 1), np.uint8)}), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("metadata-without-field", wire.GET_MODEL_METADATA_METHOD, wire.GetModelMetadataRequest(model_spec=wire.model_spec(MODEL)), grpc.StatusCode.INVALID_ARGUMENT, "metadata_field"),
    ("status-unknown-model", wire.GET_MODEL_STATUS_METHOD, wire.GetModelStatusRequest(model_spec=wire.model_spec("nope")), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "request_message", "code", "words"),
    [case[1:] for case in GRPC_CASES],
    ids=[case[0] for case in GRPC_CASES],
)
def test_grpc_malformed_request(
    strict_gateway: RunningGateway,
    method: str,
    request_message: Any,
    code: grpc.StatusCode,
    words: str,
) -> None:
    with (
        grpc.insecure_channel(strict_gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _rpc(channel, method, request_message)
    assert caught.value.code() == code
    assert words in (caught.value.details() or ""), caught.value.details()


def test_unimplemented_grpc_method(strict_gateway: RunningGateway) -> None:
    with grpc.insecure_channel(strict_gateway.grpc_target) as channel:
        classify = channel.unary_unary("/tensorflow.serving.PredictionService/Classify")
        with pytest.raises(grpc.RpcError) as caught:
            classify(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_unexpected_failure_is_500_with_logged_request_id(
    strict_gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with httpx.Client(base_url=strict_gateway.http_url, timeout=10) as http:
        reply = http.post("/v1/models/one:predict", json={"instances": image_rows(2)})
    assert reply.status_code == 500
    message = reply.json()["error"]
    request_id = re.search(r"request id ([0-9a-f]+)", message)
    assert request_id, message
    assert "onnxruntime" not in message.lower() and "Traceback" not in message
    assert request_id.group(1) in caplog.text
    with (
        grpc.insecure_channel(strict_gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _rpc(channel, wire.PREDICT_METHOD, _predict("one", inputs={"image": sample_images(2)}))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "request id" in (caught.value.details() or "")


def test_server_healthy_after_bad_requests(strict_gateway: RunningGateway) -> None:
    """Every malformed case of this module, sent here again (so the test stands alone, in any
    order), is answered and counted as an error; then everything still answers."""
    before = requests_total(strict_gateway.http_url)
    with httpx.Client(base_url=strict_gateway.http_url, timeout=10) as http:
        for _, method, path, kwargs, status, _ in REST_CASES:
            assert http.request(method, path, **kwargs).status_code == status
    with grpc.insecure_channel(strict_gateway.grpc_target) as channel:
        for _, method, request_message, code, _ in GRPC_CASES:
            with pytest.raises(grpc.RpcError) as caught:
                _rpc(channel, method, request_message)
            assert caught.value.code() == code
    after = requests_total(strict_gateway.http_url)
    # Every inference request is counted once, with its error status: all but those refused
    # before a handler runs (413 by the body limit, gRPC's own message limit).
    counted = {key: after[key] - before.get(key, 0.0) for key in after}
    assert not any(status == "OK" and count for (_, status), count in counted.items()), counted
    http_inference = [c for c in REST_CASES if c[1] == "POST" and c[4] != 413]
    grpc_inference = [
        c for c in GRPC_CASES
        if c[1] == wire.PREDICT_METHOD and c[3] != grpc.StatusCode.RESOURCE_EXHAUSTED
    ]  # fmt: skip
    assert sum(n for (protocol, _), n in counted.items() if protocol != "grpc") == len(
        http_inference
    )
    assert sum(n for (protocol, _), n in counted.items() if protocol == "grpc") == len(
        grpc_inference
    )
    with httpx.Client(base_url=strict_gateway.http_url, timeout=10) as http:
        assert http.get("/v2/health/ready").json() == {"ready": True}
        reply = http.post(PREDICT, json={"instances": image_rows(2)})
        assert reply.status_code == 200 and len(reply.json()["predictions"]) == 2
    with grpc.insecure_channel(strict_gateway.grpc_target) as channel:
        response = _rpc(channel, wire.PREDICT_METHOD, _predict())
        assert list(response.outputs) == ["probabilities"]


def test_a_model_without_a_ready_version_is_unavailable(tmp_path: Path, start_gateway: Any) -> None:
    """503 / UNAVAILABLE (retryable), not 404: the model exists, its only version failed to load."""
    write_version(tmp_path, MODEL, 1, linear_classifier())
    broken = write_version(tmp_path, "broken", 1, linear_classifier(seed=2))
    (broken / "metadata.json").write_text('{"class_names": [')
    gateway: RunningGateway = start_gateway(tmp_path)
    body = {"instances": image_rows(1)}
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        for path, kwargs, words in (
            ("/v1/models/broken:predict", {"json": body}, "model 'broken' has no version ready"),
            ("/v2/models/broken/infer", {"json": v2_body()}, "model 'broken' has no version ready"),
            ("/v1/models/broken/versions/1:predict", {"json": body},
             "version 1 of model 'broken' is not available (END: failed to load"),
        ):  # fmt: skip
            reply = http.post(path, **kwargs)
            assert reply.status_code == 503, (path, reply.text)
            assert words in reply.json()["error"], reply.text
        assert http.post(PREDICT, json=body).status_code == 200  # the other model serves
    with (
        grpc.insecure_channel(gateway.grpc_target) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        _rpc(channel, wire.PREDICT_METHOD, _predict("broken"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "model 'broken' has no version ready" in (caught.value.details() or "")
    assert requests_total(gateway.http_url)[("grpc", "UNAVAILABLE")] == 1


def test_api_keys(tmp_path: Path, start_gateway: Any) -> None:
    write_version(tmp_path, MODEL, 1, linear_classifier())
    gateway: RunningGateway = start_gateway(tmp_path, api_keys=["k-one", "k-two"])
    body = {"instances": image_rows(1)}
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.post(PREDICT, json=body).status_code == 401
        denied = http.post(PREDICT, json=body, headers={"x-api-key": "wrong"})
        assert denied.status_code == 401 and "API key" in denied.json()["error"]
        assert http.post(PREDICT, json=body, headers={"x-api-key": "k-two"}).status_code == 200
        assert (
            http.post(PREDICT, json=body, headers={"Authorization": "Bearer k-one"}).status_code
            == 200
        )
        assert http.get("/v2/health/ready").status_code == 200  # probes need no key
        assert http.get("/metrics").status_code == 200
    request = _predict()
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        call = predict_call(channel)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        response = call(request, timeout=10, metadata=(("authorization", "Bearer k-one"),))
        assert "probabilities" in response.outputs
        response = call(request, timeout=10, metadata=(("x-api-key", "k-two"),))
        assert "probabilities" in response.outputs


@pytest.mark.parametrize(
    ("headers", "accepted"),
    [
        ({"authorization": "Bearer k-one"}, True),
        ({"authorization": "bearer  k-one"}, True),  # the scheme is case-insensitive
        ({"x-api-key": "k-one"}, True),
        ({"authorization": "k-one"}, False),  # a bare key is no bearer token
        ({"authorization": "Basic k-one", "x-api-key": "k-one"}, True),  # another scheme: no key
        ({"authorization": "Bearer wrong", "x-api-key": "k-one"}, False),  # bearer is checked
        ({"authorization": "Bearer"}, False),  # a scheme without a token
    ],
)
def test_api_key_headers_mean_the_same_over_rest_and_grpc(
    tmp_path: Path, start_gateway: Any, headers: dict[str, str], accepted: bool
) -> None:
    write_version(tmp_path, MODEL, 1, linear_classifier())
    gateway: RunningGateway = start_gateway(tmp_path, api_keys=["k-one"])
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        rest = http.post(PREDICT, json={"instances": image_rows(1)}, headers=headers)
    assert rest.status_code == (200 if accepted else 401)
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        metadata = tuple(headers.items())
        if accepted:
            assert (
                "probabilities"
                in predict_call(channel)(_predict(), timeout=10, metadata=metadata).outputs
            )
        else:
            with pytest.raises(grpc.RpcError) as caught:
                predict_call(channel)(_predict(), timeout=10, metadata=metadata)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert caught.value.details() == rest.json()["error"]  # one message for both
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
