"""No silent wrong answers: a bare model whose input is float (it expects pixels scaled somehow)
is never sent raw 0-255 pixels by `classify`, the CLI or the image endpoint; `predict` with
arrays the caller prepared still works."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from clients import Client, InvalidInput
from clients.cli import main as cli
from tests.serving.serving_harness import RunningGateway, gateway_settings
from tests.tiny_models import reference_predict, write_version

MODEL = "floaty"
REFUSAL = (
    f"model '{MODEL}' takes float32 input 'image' [-1, 32, 32, 3], not uint8 images: classify "
    "would send raw 0-255 pixels with no scaling; export the model with `python -m training "
    "export --from ...` (its preprocessing inside the model), or preprocess the images yourself "
    "and call predict()"
)


def float_input_classifier(classes: int = 5) -> onnx.ModelProto:
    """softmax(flatten(x) @ W) for float NHWC [N, 32, 32, 3] input meant to be in 0-1."""
    weights = np.random.default_rng(2).normal(0, 0.05, (32 * 32 * 3, classes)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"], axis=1),
            helper.make_node("MatMul", ["flat", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        ],
        "float_input",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 32, 32, 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningGateway, Path]]:
    root = tmp_path_factory.mktemp("float-model")
    metadata = {"class_names": list("abcde")}  # class names, but nothing about preprocessing
    version = write_version(root, MODEL, 1, float_input_classifier(), metadata=metadata)
    gateway = RunningGateway(gateway_settings(root)).start()
    yield gateway, version
    gateway.stop()


def png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(out, format="PNG")
    return out.getvalue()


@pytest.mark.parametrize("protocol", ["rest", "v2", "grpc"])
def test_classify_refuses_raw_pixels_for_a_float_input(served, protocol: str) -> None:
    gateway, _ = served
    target = f"grpc://{gateway.grpc_target}" if protocol == "grpc" else gateway.http_url
    with Client(target, protocol=protocol) as client, pytest.raises(InvalidInput) as refused:
        client.classify(MODEL, [png()])
    assert refused.value.message == REFUSAL


def test_cli_refuses_with_exit_code_3(served, tmp_path: Path, capsys) -> None:
    gateway, _ = served
    (tmp_path / "photo.png").write_bytes(png())
    code = cli(
        ["predict", "--target", gateway.http_url, "--model", MODEL, str(tmp_path / "photo.png")]
    )
    assert code == 3
    assert capsys.readouterr().err == f"error: INVALID_ARGUMENT: {REFUSAL}\n"


def test_image_endpoint_refuses_too(served) -> None:
    gateway, _ = served
    reply = httpx.post(
        f"{gateway.http_url}/v1/models/{MODEL}:classify_image",
        content=png(), headers={"content-type": "image/png"}, timeout=10,
    )  # fmt: skip
    assert reply.status_code == 400
    assert reply.json() == {
        "error": f"model '{MODEL}' does not take a single uint8 NHWC image",
        "id": reply.headers["x-request-id"],  # every error body names its request
    }


def test_predict_with_prepared_arrays_still_works(served) -> None:
    gateway, version = served
    images = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    with Client(gateway.http_url, protocol="v2") as client:
        answer = client.predict(MODEL, images)
    assert np.abs(answer - reference_predict(version / "model.onnx", images)).max() <= 1e-5
