"""A float NCHW model exported with `--keep-float-input`: its graph keeps the model's own float
input, its metadata.json declares how raw pixels become that input, and the gateway's image
endpoint, `Client.classify` (REST, V2, gRPC) and `python -m clients predict` apply it, answering
what the user's model answers offline on the same preprocessing."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from clients import Client
from clients.cli import main as cli
from tests.serving.serving_harness import RunningGateway, gateway_settings
from training.__main__ import main as training_cli

MODEL = "torchy"
CLASSES = ["cat", "dog", "bird", "fish", "frog"]
SCALE = 1 / 255
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOLERANCE = 1e-5
DECLARED = {
    "inside_model": False, "input": "input", "dtype": "float32", "layout": "NCHW",
    "height": 32, "width": 32, "channels": 3, "color_mode": "rgb", "resize": "bilinear",
    "scale": SCALE, "mean": list(MEAN), "std": list(STD),
}  # fmt: skip


def user_model() -> onnx.ModelProto:
    """What a PyTorch export looks like: float NCHW [N, 3, 32, 32] -> conv, pool, dense, softmax."""
    rng = np.random.default_rng(5)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "dw", "db"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output"], axis=1),
        ],
        "user_nchw",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [
            numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b"),
            numpy_helper.from_array(rng.normal(0, 2.0, (8, 5)).astype(np.float32), "dw"),
            numpy_helper.from_array(rng.normal(0, 0.1, (5,)).astype(np.float32), "db"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def offline(pixels: np.ndarray) -> np.ndarray:
    """The user's model on uint8 NHWC pixels, preprocessed here by hand: 0-1, mean/std, NCHW."""
    session = ort.InferenceSession(
        user_model().SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x = (pixels.astype(np.float32) * np.float32(SCALE) - np.asarray(MEAN, np.float32)) / (
        np.asarray(STD, np.float32)
    )
    return session.run(["output"], {"input": np.ascontiguousarray(x.transpose(0, 3, 1, 2))})[0]


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    """What the image endpoint and the client decode: RGB, resized to 32x32 bilinear."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        if rgb.size != (32, 32):
            rgb = rgb.resize((32, 32), Image.Resampling.BILINEAR)
        return np.asarray(rgb, np.uint8)[None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("keep-float")
    onnx.save(user_model(), str(root / "user.onnx"))
    code = training_cli(
        [
            "export", "--from", str(root / "user.onnx"), "--name", MODEL,
            "--class-names", ",".join(CLASSES), "--scale", repr(SCALE),
            "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
            "--layout", "nchw", "--keep-float-input", "--repository", str(root / "repo"),
        ]
    )  # fmt: skip
    assert code == 0
    return root / "repo"


@pytest.fixture(scope="module")
def served(exported: Path) -> Iterator[RunningGateway]:
    gateway = RunningGateway(gateway_settings(exported)).start()
    yield gateway
    gateway.stop()


IMAGES = {
    "png": encoded(np.random.default_rng(1).integers(0, 256, (32, 32, 3), np.uint8), "PNG"),
    "jpeg": encoded(np.random.default_rng(2).integers(0, 256, (32, 32, 3), np.uint8), "JPEG"),
    "png-resized": encoded(np.random.default_rng(3).integers(0, 256, (40, 48, 3), np.uint8), "PNG"),
}


def test_the_export_keeps_the_float_input_and_declares_the_preprocessing(exported: Path) -> None:
    version = exported / MODEL / "1"
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    (model_input,) = session.get_inputs()
    assert (model_input.name, model_input.type, model_input.shape[1:]) == (
        "input", "tensor(float)", [3, 32, 32]
    )  # fmt: skip
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    metadata = json.loads((version / "metadata.json").read_text())
    assert {k: metadata["preprocessing"][k] for k in DECLARED} == DECLARED
    assert metadata["inputs"] == [{"name": "input", "dtype": "float32", "shape": [-1, 3, 32, 32]}]
    assert metadata["parity"]["fp32"]["passed"] and metadata["parity"]["fp32"]["images"] == 1000
    # The exported graph answers what the user's model answers on the declared preprocessing.
    pixels = np.random.default_rng(9).integers(0, 256, (4, 32, 32, 3), np.uint8)
    x = (pixels.astype(np.float32) * np.float32(SCALE) - np.asarray(MEAN, np.float32)) / (
        np.asarray(STD, np.float32)
    )
    (answer,) = session.run(["probabilities"], {"input": x.transpose(0, 3, 1, 2).copy()})
    assert np.abs(answer - offline(pixels)).max() <= TOLERANCE


def test_metadata_answers_carry_the_preprocessing(served: RunningGateway) -> None:
    rest = httpx.get(f"{served.http_url}/v1/models/{MODEL}/metadata", timeout=10).json()
    assert rest["metadata"]["preprocessing"] == DECLARED
    v2 = httpx.get(f"{served.http_url}/v2/models/{MODEL}", timeout=10).json()
    assert v2["parameters"]["preprocessing"] == DECLARED
    with Client(f"grpc://{served.grpc_target}") as client:
        declared = client.metadata(MODEL).preprocessing
    assert declared is not None and declared.to_json() == DECLARED


@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_image_endpoint_applies_the_declared_preprocessing(served: RunningGateway, kind) -> None:
    data = IMAGES[kind]
    reply = httpx.post(
        f"{served.http_url}/v1/models/{MODEL}:classify_image?top_k=5", content=data,
        headers={"content-type": "image/jpeg" if kind == "jpeg" else "image/png"}, timeout=10,
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    expected = offline(decoded(data))[0]
    for entry in reply.json()["predictions"]:
        assert entry["label"] == CLASSES[entry["index"]]
        assert abs(entry["score"] - expected[entry["index"]]) <= TOLERANCE
    assert reply.json()["predictions"][0]["index"] == int(expected.argmax())


@pytest.mark.parametrize("protocol", ["rest", "v2", "grpc"])
def test_classify_applies_the_declared_preprocessing(served: RunningGateway, protocol) -> None:
    target = f"grpc://{served.grpc_target}" if protocol == "grpc" else served.http_url
    images = [IMAGES["png"], IMAGES["jpeg"], IMAGES["png-resized"]]
    with Client(target, protocol=protocol) as client:
        answers = client.classify(MODEL, images, top_k=5)
    expected = offline(np.concatenate([decoded(data) for data in images]))
    for answer, row in zip(answers, expected, strict=True):
        assert answer[0][0] == CLASSES[int(row.argmax())]
        for label, score in answer:
            assert abs(score - row[CLASSES.index(label)]) <= TOLERANCE


def test_cli_predict_applies_it_too(served: RunningGateway, tmp_path: Path, capsys) -> None:
    (tmp_path / "photo.jpg").write_bytes(IMAGES["jpeg"])
    code = cli(
        ["predict", "--target", served.http_url, "--model", MODEL, "--top-k", "5", "--json",
         str(tmp_path / "photo.jpg")]
    )  # fmt: skip
    assert code == 0
    (entry,) = json.loads(capsys.readouterr().out)
    expected = offline(decoded(IMAGES["jpeg"]))[0]
    assert entry["top_k"][0]["label"] == CLASSES[int(expected.argmax())]
    for item in entry["top_k"]:
        assert abs(item["score"] - expected[CLASSES.index(item["label"])]) <= TOLERANCE


def test_keep_float_input_refuses_a_uint8_model(tmp_path: Path, capsys) -> None:
    model = user_model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    model.graph.node.insert(0, helper.make_node("Cast", ["input"], ["input_f"], to=1))
    model.graph.node[1].input[0] = "input_f"
    onnx.save(model, str(tmp_path / "u8.onnx"))
    code = training_cli(
        ["export", "--from", str(tmp_path / "u8.onnx"), "--name", "u8", "--class-names",
         ",".join(CLASSES), "--keep-float-input", "--repository", str(tmp_path / "repo")]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "error: input 'input' is uint8 already: --keep-float-input is for a model whose input "
        "is float\n"
    )
    assert not (tmp_path / "repo").exists()


def test_a_declaration_that_does_not_fit_the_model_fails_its_load(tmp_path: Path) -> None:
    """Checked when the version loads, not when a request comes: the declared layout is NHWC,
    the model takes NCHW."""
    from tests.tiny_models import write_version

    metadata = {"class_names": CLASSES, "preprocessing": {**DECLARED, "layout": "NHWC"}}
    write_version(tmp_path, "misfit", 1, user_model(), metadata=metadata)
    gateway = RunningGateway(gateway_settings(tmp_path)).start()
    try:
        status = httpx.get(f"{gateway.http_url}/v1/models/misfit", timeout=10).json()
    finally:
        gateway.stop()
    (entry,) = status["model_version_status"]
    assert entry["state"] == "END"
    assert entry["status"]["error_message"] == (
        "failed to load: ValueError: metadata.json: preprocessing declares input 'input' float32 "
        "[-1, 32, 32, 3], the model takes 'input' float32 [-1, 3, 32, 32]"
    )


def test_a_hand_written_declaration_for_a_big_grayscale_input_is_applied(tmp_path: Path) -> None:
    """A version published by hand with the declaration in its metadata.json, 160x160 NHWC
    grayscale, mean/std without scale, an image resized to it: above the inline bound (the
    decode pool decodes it and does the arithmetic)."""
    from tests.tiny_models import write_version

    model = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Flatten", ["pixels"], ["flat"], axis=1),
                helper.make_node("MatMul", ["flat", "w"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            ],
            "gray_nhwc",
            [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 160, 160, 1])],
            [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
            [
                numpy_helper.from_array(
                    np.random.default_rng(6).normal(0, 0.01, (160 * 160, 3)).astype(np.float32), "w"
                )
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    declared = {
        "inside_model": False, "input": "pixels", "dtype": "float32", "layout": "NHWC",
        "height": 160, "width": 160, "channels": 1, "color_mode": "grayscale", "scale": None,
        "mean": [100.0], "std": [50.0],
    }  # fmt: skip
    write_version(
        tmp_path,
        "gray",
        1,
        model,
        metadata={"class_names": ["a", "b", "c"], "preprocessing": declared},
    )
    rgb = np.random.default_rng(7).integers(0, 256, (200, 180, 3), np.uint8)
    data = encoded(rgb, "PNG")
    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L").resize((160, 160), Image.Resampling.BILINEAR)
    x = (np.asarray(gray, np.float32)[None, :, :, None] - np.float32(100.0)) / np.float32(50.0)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (expected,) = session.run(["probabilities"], {"pixels": x})
    gateway = RunningGateway(gateway_settings(tmp_path)).start()
    try:
        reply = httpx.post(
            f"{gateway.http_url}/v1/models/gray:classify_image", content=data,
            headers={"content-type": "image/png"}, timeout=10,
        )  # fmt: skip
    finally:
        gateway.stop()
    assert reply.status_code == 200, reply.text
    for entry in reply.json()["predictions"]:
        assert abs(entry["score"] - expected[0][entry["index"]]) <= TOLERANCE
