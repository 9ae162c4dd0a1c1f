"""`python -m training export --from PATH`: a model the user brings, exported under the repository
contract, served by a real gateway, and the refusals (one line each, nothing left behind)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from clients import Client
from tests.serving.serving_harness import RunningGateway, gateway_settings
from training.__main__ import main

CLASSES = ["cat", "dog", "bird", "fish", "frog"]
SCALE = "0.00392156862745098"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TOLERANCE = 1e-4


# --- models a user might bring ---------------------------------------------------------------------


def keras_rgb_classifier(path: Path) -> Any:
    """A small Keras CNN: float 32x32x3 input scaled 0-1, 5 classes (softmax)."""
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((32, 32, 3), name="pixels")
    x = keras.layers.Conv2D(6, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.save(path)
    return model


def onnx_nchw_classifier(
    softmax: bool = True,
    input_name: str = "input",
    input_shape: list[Any] | None = None,
    input_type: int = TensorProto.FLOAT,
    classes: int = len(CLASSES),
) -> onnx.ModelProto:
    """What a PyTorch export looks like: float NCHW [N, 3, 32, 32] -> Conv/Relu/pool/Gemm ->
    Softmax (or logits), seeded weights."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", [input_name, "w", "b"], ["c"], kernel_shape=[3, 3], pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "dw", "db"], ["logits" if softmax else "output"]),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    initializers = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(0, 1.0, (8, classes)).astype(np.float32), "dw"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "db"),
    ]
    shape = input_shape or ["N", 3, 32, 32]
    graph = helper.make_graph(
        nodes,
        "user_nchw",
        [helper.make_tensor_value_info(input_name, input_type, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnx_flat_classifier() -> onnx.ModelProto:
    """An MLP on flat [N, 3072] vectors: not an image input."""
    weights = np.full((3072, len(CLASSES)), 0.001, np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["l"]), helper.make_node("Softmax", ["l"], ["output"], axis=1)],
        "flat",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3072])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(CLASSES)])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def onnx_batch_one_classifier() -> onnx.ModelProto:
    """Traced with a batch of 1: a Reshape to [1, 3072] inside, so a batch of 3 fails."""
    weights = np.full((3072, len(CLASSES)), 0.001, np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["input", "shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "w"], ["l"]),
            helper.make_node("Softmax", ["l"], ["output"], axis=1),
        ],
        "batch_one",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, len(CLASSES)])],
        [numpy_helper.from_array(weights, "w"),
         numpy_helper.from_array(np.array([1, 3072], np.int64), "shape")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# --- helpers ---------------------------------------------------------------------------------------


def encoded(pixels: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return out.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.uint8)


def export(capsys: pytest.CaptureFixture[str], *arguments: str) -> tuple[int, str, str]:
    code = main(["export", *arguments])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_served(
    repository: Path, name: str, images: np.ndarray, offline: Any, *, saved_model: bool
) -> None:
    """The version answers as the model offline does, over TF REST, TF gRPC, V2 JSON, V2 binary
    and the image endpoint (PNG and JPEG), with its class names."""
    expected = offline(images)
    gateway = RunningGateway(gateway_settings(repository)).start()
    try:
        for target, protocol in (
            (gateway.http_url, "rest"),
            (f"grpc://{gateway.grpc_target}", "grpc"),
            (gateway.http_url, "v2"),  # binary tensors
        ):
            with Client(target, protocol=protocol) as client:
                answer = client.predict(name, images)
                assert np.abs(np.asarray(answer) - expected).max() <= TOLERANCE, (target, protocol)
                assert client.metadata(name).class_names == CLASSES
        body = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": list(images.shape),
                 "data": images.ravel().tolist()}
            ]
        }  # fmt: skip
        reply = httpx.post(f"{gateway.http_url}/v2/models/{name}/infer", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        (output,) = reply.json()["outputs"]
        assert output["name"] == "probabilities"
        v2_json = np.asarray(output["data"], np.float64).reshape(output["shape"])
        assert np.abs(v2_json - expected).max() <= TOLERANCE
        for fmt in ("PNG", "JPEG"):
            data = encoded(images[0], fmt)
            scores = offline(decoded(data)[None])[0]
            reply = httpx.post(
                f"{gateway.http_url}/v1/models/{name}:classify_image?top_k=5",
                content=data, headers={"content-type": f"image/{fmt.lower()}"}, timeout=30,
            )  # fmt: skip
            assert reply.status_code == 200, reply.text
            predictions = reply.json()["predictions"]
            assert [p["label"] for p in predictions] == [
                CLASSES[i] for i in np.argsort(-scores, kind="stable")
            ], fmt
            for prediction in predictions:
                assert prediction["score"] == pytest.approx(
                    scores[prediction["index"]], abs=TOLERANCE
                )
        with Client(gateway.http_url) as client:  # the client's own image path, raw pixels
            (top,) = client.classify(name, [images[1]], top_k=1)
            assert top[0][0] == CLASSES[int(expected[1].argmax())]
    finally:
        gateway.stop()
    version_dir = repository / name / "1"
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["inputs"] == [{"name": "image", "dtype": "uint8", "shape": [-1, 32, 32, 3]}]
    assert metadata["outputs"] == [
        {"name": "probabilities", "dtype": "float32", "shape": [-1, len(CLASSES)]}
    ]
    assert metadata["class_names"] == CLASSES
    assert metadata["parity"]["fp32"]["passed"] and metadata["parity"]["fp32"]["images"] >= 1000
    assert (version_dir / "model.fp16.onnx").is_file()
    assert (version_dir / "saved_model.pb").is_file() == saved_model
    assert [p.name for p in (repository / name).iterdir()] == ["1"]  # nothing half-written


# --- acceptance: a Keras model and an NCHW ONNX model, served everywhere ------------------------------


def test_keras_model_exports_and_serves_like_keras_offline(tmp_path: Path, capsys) -> None:
    import tensorflow as tf

    from clients.wire import read_models_config

    model = keras_rgb_classifier(tmp_path / "mine.keras")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    repository = tmp_path / "repo"
    code, out, err = export(
        capsys, "--from", str(tmp_path / "mine.keras"), "--name", "mine",
        "--class-names", str(labels), "--scale", SCALE, "--repository", str(repository),
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"published {repository / 'mine' / '1'} (saved_model, onnx")

    def offline(pixels: np.ndarray) -> np.ndarray:
        return model.predict(pixels.astype(np.float32) / 255.0, verbose=0)

    images = np.random.default_rng(11).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    check_served(repository, "mine", images, offline, saved_model=True)

    # What TF Serving loads: the signature contract, warmup records and models.config.
    version_dir = repository / "mine" / "1"
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    (spec,) = signature.structured_input_signature[1].values()
    assert spec.name == "image" and spec.dtype == tf.uint8
    assert spec.shape.as_list() == [None, 32, 32, 3]
    saved = signature(image=tf.constant(images))["probabilities"].numpy()
    assert np.abs(saved - offline(images)).max() <= TOLERANCE
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    config = read_models_config((repository / "models.config").read_text())
    assert [m.name for m in config.model_config_list.config] == ["mine"]
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["parity"]["saved_model"]["passed"]
    assert metadata["preprocessing"]["model_input"]["scale"] == float(SCALE)
    assert metadata["source"]["kind"] == "keras"


def test_nchw_onnx_classifier_exports_and_serves_like_onnx_offline(tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    source = onnx_nchw_classifier()
    onnx.save(source, str(tmp_path / "torch_like.onnx"))
    # --images: the common image-folder layout; the parity gate reads every image under it.
    rng = np.random.default_rng(4)
    for label in CLASSES[:2]:
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)  # resized to 32x32
            Image.fromarray(pixels).save(tmp_path / "images" / label / f"{i}.png")
    repository = tmp_path / "repo"
    code, out, err = export(
        capsys, "--from", str(tmp_path / "torch_like.onnx"), "--name", "torchy",
        "--class-names", ",".join(CLASSES), "--scale", SCALE,
        "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)),
        "--layout", "nchw", "--images", str(tmp_path / "images"), "--repository", str(repository),
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"published {repository / 'torchy' / '1'} (onnx, onnx_fp16)")
    session = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])

    def offline(pixels: np.ndarray) -> np.ndarray:
        x = (pixels.astype(np.float32) / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(
            STD, np.float32
        )
        return session.run(["output"], {"input": x.transpose(0, 3, 1, 2).astype(np.float32)})[0]

    images = np.random.default_rng(12).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    check_served(repository, "torchy", images, offline, saved_model=False)
    metadata = json.loads((repository / "torchy" / "1" / "metadata.json").read_text())
    assert metadata["source"]["parity_inputs"] == (
        f"6 images from {tmp_path / 'images'} + 994 generated images (uniform pixels 0-255, seed 42)"
    )
    assert metadata["preprocessing"]["model_input"]["layout"] == "NCHW"
    # An ONNX source has no SavedModel: models.config (TF Serving's) does not list it.
    assert "torchy" not in (repository / "models.config").read_text()


def test_logits_model_gets_a_softmax_and_an_input_named_image_is_kept_apart(
    tmp_path: Path, capsys
) -> None:
    """--softmax appends one; a user input already called `image` (float, batch fixed at 1 but
    free inside) is renamed, so the exported uint8 `image` does not collide with it."""
    import onnxruntime as ort

    from training.own_model import softmax

    source = onnx_nchw_classifier(softmax=False, input_name="image", input_shape=[1, 3, 32, 32])
    onnx.save(source, str(tmp_path / "logits.onnx"))
    repository = tmp_path / "repo"
    code, _, err = export(
        capsys, "--from", str(tmp_path / "logits.onnx"), "--name", "logits", "--softmax",
        "--class-names", ",".join(CLASSES), "--scale", SCALE, "--repository", str(repository),
        "--no-fp16",
    )  # fmt: skip
    assert code == 0, err
    images = np.random.default_rng(1).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    raw = ort.InferenceSession(source.SerializeToString(), providers=["CPUExecutionProvider"])
    x = (images.astype(np.float32) * np.float32(SCALE)).transpose(0, 3, 1, 2)
    expected = softmax(np.concatenate([raw.run(None, {"image": row[None]})[0] for row in x]))
    exported = ort.InferenceSession(
        str(repository / "logits" / "1" / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (answer,) = exported.run(["probabilities"], {"image": images})
    assert np.abs(answer - expected).max() <= TOLERANCE
    assert not (repository / "logits" / "1" / "model.fp16.onnx").exists()


def test_saved_model_directory_exports_like_its_signature(tmp_path: Path, capsys) -> None:
    """A SavedModel (Keras' model.export: input `pixels`, output `output_0`) gets the contract's
    signature in front of its own, and every file agrees with the signature it came from."""
    import onnxruntime as ort
    import tensorflow as tf

    keras_rgb_classifier(tmp_path / "mine.keras").export(str(tmp_path / "exported"), verbose=False)
    repository = tmp_path / "repo"
    code, out, err = export(
        capsys, "--from", str(tmp_path / "exported"), "--name", "saved", "--class-names",
        ",".join(CLASSES), "--scale", SCALE, "--repository", str(repository),
    )  # fmt: skip
    assert code == 0, err
    assert "parity against the SavedModel given (exported)" in out
    images = np.random.default_rng(6).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    source = tf.saved_model.load(str(tmp_path / "exported")).signatures["serving_default"]
    (expected,) = source(pixels=tf.constant(images.astype(np.float32) / 255.0)).values()
    version_dir = repository / "saved" / "1"
    exported = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    served = exported(image=tf.constant(images))["probabilities"].numpy()
    assert np.abs(served - expected.numpy()).max() <= TOLERANCE
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_answer,) = session.run(["probabilities"], {"image": images})
    assert np.abs(onnx_answer - expected.numpy()).max() <= TOLERANCE
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert (
        metadata["source"]["kind"] == "saved_model" and metadata["source"]["output"] == "output_0"
    )
    assert "saved" in (repository / "models.config").read_text()


def test_grayscale_keras_logits_get_a_softmax_in_every_file(tmp_path: Path, capsys) -> None:
    import keras
    import onnxruntime as ort
    import tensorflow as tf

    from training.own_model import softmax

    keras.utils.set_random_seed(1)
    inputs = keras.Input((24, 24, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))
    model.save(tmp_path / "gray.keras")
    repository = tmp_path / "repo"
    code, _, err = export(
        capsys, "--from", str(tmp_path / "gray.keras"), "--name", "gray", "--class-names",
        "x,y,z", "--scale", SCALE, "--softmax", "--repository", str(repository), "--no-fp16",
    )  # fmt: skip
    assert code == 0, err
    images = np.random.default_rng(2).integers(0, 256, (4, 24, 24, 1), dtype=np.uint8)
    expected = softmax(model.predict(images.astype(np.float32) / 255.0, verbose=0))
    version_dir = repository / "gray" / "1"
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    saved = signature(image=tf.constant(images))["probabilities"].numpy()
    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_answer,) = session.run(["probabilities"], {"image": images})
    assert np.abs(saved - expected).max() <= TOLERANCE
    assert np.abs(onnx_answer - expected).max() <= TOLERANCE
    metadata = json.loads((version_dir / "metadata.json").read_text())
    assert metadata["preprocessing"]["color_mode"] == "grayscale"
    assert metadata["preprocessing"]["model_input"]["softmax_added"] is True
    assert metadata["source"]["output"] == "logits"


# --- refusals: one line naming what is wrong, nothing left behind -------------------------------------


def refused(capsys, tmp_path: Path, source: Path, *options: str) -> str:
    repository = tmp_path / "repo"
    code, out, err = export(
        capsys, "--from", str(source), "--name", "mine", "--repository", str(repository), *options
    )
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert not repository.exists(), sorted(repository.rglob("*"))
    return err.strip()


def saved(tmp_path: Path, model: onnx.ModelProto, name: str = "user.onnx") -> Path:
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


NAMES = ("--class-names", ",".join(CLASSES))


def test_refuses_an_input_that_is_not_an_image(tmp_path: Path, capsys) -> None:
    message = refused(capsys, tmp_path, saved(tmp_path, onnx_flat_classifier()), *NAMES)
    assert message == (
        "error: input 'input' has shape [-1, 3072]: an image classifier takes "
        "[batch, height, width, channels] (or [batch, channels, height, width] with --layout nchw)"
    )


def test_refuses_an_input_of_the_wrong_dtype(tmp_path: Path, capsys) -> None:
    model = onnx_nchw_classifier(input_type=TensorProto.INT64)
    model.graph.node.insert(
        0, helper.make_node("Cast", ["input"], ["input_f"], to=TensorProto.FLOAT)
    )
    model.graph.node[1].input[0] = "input_f"
    message = refused(capsys, tmp_path, saved(tmp_path, model), *NAMES)
    assert message == "error: input 'input' is int64: float or uint8 images expected"


def test_refuses_a_wrong_channel_count_under_the_layout_given(tmp_path: Path, capsys) -> None:
    source = saved(tmp_path, onnx_nchw_classifier())
    message = refused(capsys, tmp_path, source, *NAMES, "--layout", "nhwc")
    assert message == (
        "error: input 'input' has shape [-1, 3, 32, 32]: 32 channels as NHWC "
        "(1 or 3 expected; is --layout right?)"
    )


def test_refuses_an_output_that_is_not_a_probability_vector(tmp_path: Path, capsys) -> None:
    # Logits that do not depend on the image: 1, 2, 3, 4, 5 for every row.
    model = onnx_nchw_classifier(softmax=False)
    for init in model.graph.initializer:
        if init.name == "dw":
            init.CopyFrom(numpy_helper.from_array(np.zeros((8, 5), np.float32), "dw"))
        if init.name == "db":
            init.CopyFrom(numpy_helper.from_array(np.arange(1, 6, dtype=np.float32), "db"))
    message = refused(capsys, tmp_path, saved(tmp_path, model), *NAMES, "--scale", SCALE)
    assert message == (
        "error: output 'output' is not a probability vector (rows sum to 15 to 15, values 1 to "
        "5): end the model with a softmax, or pass --softmax to add one"
    )


def test_refuses_class_names_that_do_not_count_the_outputs(tmp_path: Path, capsys) -> None:
    source = saved(tmp_path, onnx_nchw_classifier())
    message = refused(capsys, tmp_path, source, "--class-names", "a,b,c")
    assert message == "error: output 'output' has 5 classes, --class-names names 3"


def test_refuses_a_graph_traced_for_one_image(tmp_path: Path, capsys) -> None:
    message = refused(capsys, tmp_path, saved(tmp_path, onnx_batch_one_classifier()), *NAMES)
    assert message.startswith("error: the model fails on a batch of 3 images (")
    assert message.endswith("); export it with a free batch dimension on input 'input'")


def test_refuses_a_keras_model_with_an_unknown_layer(tmp_path: Path, capsys) -> None:
    import keras

    class Doubling(keras.layers.Layer):  # not registered: a loader cannot find it
        def call(self, x: Any) -> Any:
            return x * 2.0

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(Doubling()(inputs))
    outputs = keras.layers.Dense(len(CLASSES), activation="softmax")(x)
    keras.Model(inputs, outputs).save(tmp_path / "custom.keras")
    message = refused(capsys, tmp_path, tmp_path / "custom.keras", *NAMES)
    assert message == (
        "error: unknown layer 'Doubling' in custom.keras: import the module that registers it "
        "(keras.saving.register_keras_serializable) or export a SavedModel"
    )


def test_refuses_what_is_not_a_model_and_bad_options(tmp_path: Path, capsys) -> None:
    (tmp_path / "weights.h5").write_bytes(b"\0" * 16)
    assert refused(capsys, tmp_path, tmp_path / "weights.h5", *NAMES) == (
        f"error: {tmp_path / 'weights.h5'} is neither a .keras file, a SavedModel directory "
        "nor an .onnx file"
    )
    (tmp_path / "broken.onnx").write_bytes(b"not a protobuf")
    assert refused(capsys, tmp_path, tmp_path / "broken.onnx", *NAMES).startswith(
        "error: cannot load broken.onnx as an ONNX model: "
    )
    source = saved(tmp_path, onnx_nchw_classifier())
    assert refused(capsys, tmp_path, source, *NAMES, "--mean", "0.5,0.5") == (
        "error: --mean and --std go together"
    )
    assert refused(capsys, tmp_path, source, *NAMES, "--mean", "0.5,0.5", "--std", "1,1") == (
        "error: --mean has 2 values; the model's input has 3 channel(s)"
    )
    assert refused(capsys, tmp_path, source, "--class-names", "a,b,a,c,d") == (
        "error: --class-names names 'a' more than once"
    )


def test_a_checkpoint_of_another_model_is_refused_not_half_exported(tmp_path: Path, capsys) -> None:
    """`--model lenet --checkpoint yours.keras` used to end in a TensorFlow traceback and leave
    an empty lenet/ folder: now it says what the checkpoint is and where to go."""
    keras_rgb_classifier(tmp_path / "mine.keras")
    repository = tmp_path / "repo"
    code, _, err = export(
        capsys, "--model", "lenet", "--checkpoint", str(tmp_path / "mine.keras"),
        "--repository", str(repository),
    )  # fmt: skip
    assert code == 2
    assert err == (
        f"error: {tmp_path / 'mine.keras'} is not a lenet checkpoint for mnist (its input is "
        "float32 [None, 32, 32, 3]; ours take uint8 [None, 28, 28, 1]): export a model of your "
        "own with --from PATH --name NAME --class-names ...\n"
    )
    assert not repository.exists()
    code, _, err = export(capsys, "--from", str(tmp_path / "mine.keras"), "--model", "lenet")
    assert code == 2
    assert err == "error: --from exports your model; --model/--checkpoint one of ours, not both\n"


def test_the_command_line_refuses_in_one_line_and_no_traceback(tmp_path: Path) -> None:
    """As a user runs it: `python -m training export --from` in its own process."""
    import subprocess
    import sys

    source = saved(tmp_path, onnx_flat_classifier())
    result = subprocess.run(
        [sys.executable, "-m", "training", "export", "--from", str(source), "--name", "flat",
         "--class-names", ",".join(CLASSES), "--repository", str(tmp_path / "repo")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "error: input 'input' has shape [-1, 3072]: an image classifier takes "
        "[batch, height, width, channels] (or [batch, channels, height, width] with --layout "
        "nchw)\n"
    )
    assert result.stdout == "" and not (tmp_path / "repo").exists()
