"""TF Serving REST, KServe V2 and image routes against a real gateway on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.metrics_text import metric_samples, metric_value
from tests.serving.serving_harness import RunningGateway
from tests.tiny_models import reference_predict, sample_images

MODEL = "tiny"


@pytest.fixture(scope="module")
def http(gateway: RunningGateway) -> httpx.Client:
    with httpx.Client(base_url=gateway.http_url, timeout=10) as client:
        yield client


def reference(repo: Path, version: int, images: np.ndarray) -> np.ndarray:
    return reference_predict(repo / MODEL / str(version) / "model.onnx", images)


def test_status_lists_every_version(http: httpx.Client) -> None:
    reply = http.get(f"/v1/models/{MODEL}")
    assert reply.status_code == 200
    states = {s["version"]: s["state"] for s in reply.json()["model_version_status"]}
    assert states == {"1": "AVAILABLE", "2": "AVAILABLE"}
    one = http.get(f"/v1/models/{MODEL}/labels/stable").json()["model_version_status"]
    assert [s["version"] for s in one] == ["1"]
    assert one[0]["status"] == {"error_code": "OK", "error_message": ""}


def test_metadata_is_tf_serving_signature_def(http: httpx.Client) -> None:
    body = http.get(f"/v1/models/{MODEL}/versions/1/metadata").json()
    assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
    signature = body["metadata"]["signature_def"]["signature_def"]["serving_default"]
    image = signature["inputs"]["image"]
    assert image["dtype"] == "DT_UINT8"
    assert [d["size"] for d in image["tensor_shape"]["dim"]] == ["-1", "28", "28", "1"]
    assert signature["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert signature["method_name"] == "tensorflow/serving/predict"
    # Our addition: the labels from metadata.json, next to signature_def.
    assert body["metadata"]["class_names"] == [f"class_{i}" for i in range(10)]


def test_row_format_gets_predictions(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(3, seed=1)
    reply = http.post(f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()})
    assert reply.status_code == 200, reply.text
    predictions = np.array(reply.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predictions, reference(tiny_repo, 2, images), rtol=1e-6)


def test_named_row_format(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(2, seed=2)
    instances = [{"image": image.tolist()} for image in images]
    reply = http.post(f"/v1/models/{MODEL}/versions/1:predict", json={"instances": instances})
    predictions = np.array(reply.json()["predictions"], dtype=np.float32)
    np.testing.assert_allclose(predictions, reference(tiny_repo, 1, images), rtol=1e-6)


def test_columnar_format_gets_outputs(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(2, seed=3)
    for body in ({"inputs": images.tolist()}, {"inputs": {"image": images.tolist()}}):
        reply = http.post(f"/v1/models/{MODEL}/labels/canary:predict", json=body)
        assert set(reply.json()) == {"outputs"}
        outputs = np.array(reply.json()["outputs"], dtype=np.float32)
        np.testing.assert_allclose(outputs, reference(tiny_repo, 2, images), rtol=1e-6)


def test_b64_raw_bytes_and_png(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(2, seed=4)
    raw = [{"b64": base64.b64encode(image.tobytes()).decode()} for image in images]
    reply = http.post(f"/v1/models/{MODEL}/versions/1:predict", json={"instances": raw})
    assert reply.status_code == 200, reply.text
    expected = reference(tiny_repo, 1, images)
    np.testing.assert_allclose(np.array(reply.json()["predictions"]), expected, rtol=1e-6)
    png = io.BytesIO()
    Image.fromarray(images[0][:, :, 0]).save(png, format="PNG")
    body = {"inputs": {"image": [{"b64": base64.b64encode(png.getvalue()).decode()}]}}
    reply = http.post(f"/v1/models/{MODEL}/versions/1:predict", json=body)
    np.testing.assert_allclose(np.array(reply.json()["outputs"]), expected[:1], rtol=1e-6)


def test_signature_name_serving_default(http: httpx.Client) -> None:
    body = {"signature_name": "serving_default", "instances": sample_images(1).tolist()}
    reply = http.post(f"/v1/models/{MODEL}:predict", json=body)
    assert reply.status_code == 200
    assert np.array(reply.json()["predictions"]).shape == (1, 10)


def test_v2_json_infer(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(2, seed=5)
    body = {
        "id": "r1",
        "inputs": [
            {
                "name": "image",
                "shape": [2, 28, 28, 1],
                "datatype": "UINT8",
                "data": images.ravel().tolist(),
            }
        ],
    }
    reply = http.post(f"/v2/models/{MODEL}/versions/1/infer", json=body)
    assert reply.status_code == 200, reply.text
    result = reply.json()
    assert result["model_name"] == MODEL and result["model_version"] == "1" and result["id"] == "r1"
    (output,) = result["outputs"]
    assert (
        output["name"] == "probabilities"
        and output["datatype"] == "FP32"
        and output["shape"] == [2, 10]
    )
    np.testing.assert_allclose(
        np.array(output["data"]).reshape(2, 10), reference(tiny_repo, 1, images), rtol=1e-6
    )


def test_v2_binary_infer(http: httpx.Client, tiny_repo: Path) -> None:
    images = sample_images(3, seed=6)
    header = json.dumps(
        {
            "inputs": [{"name": "image", "shape": [3, 28, 28, 1], "datatype": "UINT8",
                        "parameters": {"binary_data_size": images.nbytes}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    ).encode()  # fmt: skip
    reply = http.post(
        f"/v2/models/{MODEL}/infer",
        content=header + images.tobytes(),
        headers={
            "Inference-Header-Content-Length": str(len(header)),
            "content-type": "application/octet-stream",
        },
    )
    assert reply.status_code == 200, reply.text
    json_length = int(reply.headers["inference-header-content-length"])
    meta = json.loads(reply.content[:json_length])
    (output,) = meta["outputs"]
    assert output["parameters"]["binary_data_size"] == 3 * 10 * 4
    values = np.frombuffer(reply.content[json_length:], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(values, reference(tiny_repo, 2, images), rtol=1e-6)


def test_v2_health_and_metadata(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    assert http.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert http.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
    meta = http.get(f"/v2/models/{MODEL}").json()
    assert meta["versions"] == ["2", "1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "UINT8", "shape": [-1, 28, 28, 1]}]
    assert meta["parameters"]["class_names"] == [f"class_{i}" for i in range(10)]
    assert http.get("/v2").json()["extensions"] == ["binary_tensor_data", "statistics"]


def _png(pixels: np.ndarray, size: tuple[int, int] | None = None, mode: str = "L") -> bytes:
    image = Image.fromarray(pixels[:, :, 0]).convert(mode)
    if size:
        image = image.resize(size)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_image_endpoint_raw_and_multipart(http: httpx.Client, tiny_repo: Path) -> None:
    image = sample_images(1, seed=7)
    expected = reference(tiny_repo, 2, image)[0]
    top = np.argsort(-expected)[:3]
    reply = http.post(
        f"/v1/models/{MODEL}:classify_image?top_k=3",
        content=_png(image[0]),
        headers={"content-type": "image/png"},
    )
    assert reply.status_code == 200, reply.text
    predictions = reply.json()["predictions"]
    assert [p["index"] for p in predictions] == top.tolist()
    assert predictions[0]["label"] == f"class_{top[0]}"
    assert predictions[0]["score"] == pytest.approx(float(expected[top[0]]), rel=1e-6)
    # A colour JPEG of another size is converted to grayscale 28x28 per metadata.json.
    jpeg = io.BytesIO()
    Image.new("RGB", (56, 40), (200, 10, 10)).save(jpeg, format="JPEG")
    files = {"file": ("digit.jpg", jpeg.getvalue(), "image/jpeg")}
    reply = http.post(f"/v1/models/{MODEL}/versions/1:classify_image", files=files)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["predictions"]) == 5
    assert reply.json()["model_spec"] == {"name": MODEL, "version": "1"}


def test_metrics_and_docs(http: httpx.Client) -> None:
    http.post(f"/v1/models/{MODEL}:predict", json={"instances": sample_images(1).tolist()})
    text = http.get("/metrics").text
    ok = {"model": "tiny", "protocol": "rest", "status": "OK", "version": "2"}
    assert metric_value(text, "serving_requests_total", **ok) >= 1
    assert metric_value(text, "serving_batch_size_count", model="tiny") >= 1
    provider = {"model": "tiny", "provider": "CPUExecutionProvider", "version": "1"}
    assert metric_value(text, "serving_model_provider", **provider) == 1.0
    assert metric_value(text, "serving_compute_latency_seconds_count", model="tiny") >= 1
    names = {sample.name for sample in metric_samples(text)}
    assert "serving_queue_depth" in names
    paths = http.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}:predict" in paths and "/v2/models/{name}/infer" in paths


def test_docs_pages_load_every_asset_from_the_gateway_itself(http: httpx.Client) -> None:
    """/docs and /redoc must render on a network without internet: every script, stylesheet and
    icon they reference is a path on the gateway, and each one is served."""
    for page in ("/docs", "/redoc"):
        reply = http.get(page)
        assert reply.status_code == 200 and "text/html" in reply.headers["content-type"]
        assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", reply.text)
        assert assets, page
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            served = http.get(asset)
            assert served.status_code == 200 and len(served.content) > 1000, asset


def test_fastapi_routes_answer_like_the_fast_path(tiny_repo: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """With --no-http-fast-path the same handlers run behind FastAPI's routing: same answers."""
    routed: RunningGateway = start_gateway(tiny_repo, http_fast_path=False)
    fast: RunningGateway = start_gateway(tiny_repo)
    images = sample_images(2, seed=8)
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": [2, 28, 28, 1], "datatype": "UINT8",
                     "parameters": {"binary_data_size": images.nbytes}}]}
    ).encode()  # fmt: skip
    requests = [
        ("/v1/models/tiny/versions/1:predict", {"json": {"instances": images.tolist()}}),
        ("/v1/models/tiny/labels/canary:predict", {"json": {"inputs": images.tolist()}}),
        ("/v2/models/tiny/infer", {"content": header + images.tobytes(),
                                   "headers": {"Inference-Header-Content-Length": str(len(header))}}),
        ("/v1/models/tiny:predict", {"json": {"instances": [[1, 2]]}}),
        ("/v1/models/nope:predict", {"json": {"instances": images.tolist()}}),
    ]  # fmt: skip
    for path, kwargs in requests:
        # One client-chosen request id: both echo it, in the header, V2's id and error bodies.
        kwargs["headers"] = {**kwargs.get("headers", {}), "x-request-id": "same"}
        answers = [httpx.post(gw.http_url + path, timeout=10, **kwargs) for gw in (routed, fast)]
        assert answers[0].status_code == answers[1].status_code, path
        assert answers[0].content == answers[1].content, path
        assert answers[0].headers["x-request-id"] == answers[1].headers["x-request-id"] == "same"
        assert answers[0].headers["content-type"] == answers[1].headers["content-type"], path
