"""Tiny deterministic ONNX models and model-repository folders, for tests and benchmarks.

The models follow the repository contract: input ``image`` uint8 NHWC ``[-1, H, W, C]``, output
``probabilities`` float32 ``[-1, classes]``, scaling inside the graph. Built with ``onnx.helper``
only (no TensorFlow), so they take milliseconds to make.

- ``linear_classifier``: Cast -> scale -> Reshape -> MatMul -> Add -> Softmax.
- ``lenet_like``: LeNet-5 shaped convolutional net (Conv/Relu/MaxPool x2, three Gemm layers).
- ``any_size_classifier``: any height and width (``[-1, -1, -1, 1]``), for per-input byte limits.
- ``batch_one_classifier``: claims a dynamic batch, fails in ONNX Runtime for batches above 1.
- ``slow_classifier``: a deliberately expensive graph (repeated 1024x1024 MatMuls) for overload,
  deadline and drain tests, where a request must stay in compute for a while.
- ``write_version`` / ``write_repository`` / ``write_models_config``: folders as training writes
  them (``<root>/<model>/<version>/{model.onnx, metadata.json}``, renamed into place).
- ``reference_predict``: in-process ONNX Runtime, the ground truth tests compare servers with.

Import as ``from tests.tiny_models import ...`` from the repository root (pytest's ``pythonpath``;
``python -m`` from the root for the benchmarks).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


def _finish(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # readable by every onnxruntime this project allows
    onnx.checker.check_model(model)
    return model


def _io(height: int, width: int, channels: int, classes: int) -> tuple[Any, Any]:
    image = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, ["batch", height, width, channels]
    )
    probabilities = helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes]
    )
    return image, probabilities


def linear_classifier(
    classes: int = 10, height: int = 28, width: int = 28, channels: int = 1, seed: int = 0
) -> onnx.ModelProto:
    """softmax(flatten(image / 255) @ W + b) with seeded weights."""
    rng = np.random.default_rng(seed)
    features = height * width * channels
    weights = rng.normal(0.0, 0.5, size=(features, classes)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, size=(classes,)).astype(np.float32)
    image, probabilities = _io(height, width, channels, classes)
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_float", "inv255"], ["x_scaled"]),
        helper.make_node("Reshape", ["x_scaled", "flat_shape"], ["x_flat"]),
        helper.make_node("MatMul", ["x_flat", "W"], ["logits_raw"]),
        helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255, dtype=np.float32), "inv255"),
        numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat_shape"),
        numpy_helper.from_array(weights, "W"),
        numpy_helper.from_array(bias, "b"),
    ]
    graph = helper.make_graph(nodes, "linear_classifier", [image], [probabilities], initializers)
    return _finish(graph)


def lenet_like(classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """LeNet-5 shaped CNN on 28x28x1 uint8 input (about 60k parameters), seeded weights."""
    rng = np.random.default_rng(seed)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        scale = np.sqrt(2.0 / fan_in)
        return numpy_helper.from_array(rng.normal(0, scale, size=shape).astype(np.float32), name)

    image, probabilities = _io(28, 28, 1, classes)
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x_float", "inv255"], ["x_scaled"]),
        helper.make_node("Transpose", ["x_scaled"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "Conv", ["x_nchw", "c1w", "c1b"], ["c1"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]
        ),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "c2w", "c2b"], ["c2"], kernel_shape=[5, 5]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("MaxPool", ["r2"], ["p2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "d1w", "d1b"], ["d1"]),
        helper.make_node("Relu", ["d1"], ["r3"]),
        helper.make_node("Gemm", ["r3", "d2w", "d2b"], ["d2"]),
        helper.make_node("Relu", ["d2"], ["r4"]),
        helper.make_node("Gemm", ["r4", "d3w", "d3b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array(1.0 / 255, dtype=np.float32), "inv255"),
        init("c1w", 6, 1, 5, 5),
        numpy_helper.from_array(np.zeros(6, np.float32), "c1b"),
        init("c2w", 16, 6, 5, 5),
        numpy_helper.from_array(np.zeros(16, np.float32), "c2b"),
        init("d1w", 400, 120),
        numpy_helper.from_array(np.zeros(120, np.float32), "d1b"),
        init("d2w", 120, 84),
        numpy_helper.from_array(np.zeros(84, np.float32), "d2b"),
        init("d3w", 84, classes),
        numpy_helper.from_array(np.zeros(classes, np.float32), "d3b"),
    ]
    graph = helper.make_graph(nodes, "lenet_like", [image], [probabilities], initializers)
    return _finish(graph)


def batch_one_classifier(classes: int = 10, seed: int = 0) -> onnx.ModelProto:
    """Declares a dynamic batch but reshapes to ``[1, 784]`` inside: any batch above 1 fails in
    ONNX Runtime. Used to test that a failing batch fails only its own requests (and 500s)."""
    model = linear_classifier(classes=classes, seed=seed)
    for init in model.graph.initializer:
        if init.name == "flat_shape":
            init.CopyFrom(numpy_helper.from_array(np.array([1, 784], dtype=np.int64), "flat_shape"))
    return model


def any_size_classifier(classes: int = 10) -> onnx.ModelProto:
    """Takes uint8 images of any height and width (``[-1, -1, -1, 1]``): softmax of the mean
    pixel times a fixed row. For limits that a fixed input shape cannot show (bytes per input)."""
    image = helper.make_tensor_value_info(
        INPUT_NAME, TensorProto.UINT8, ["batch", "height", "width", 1]
    )
    probabilities = helper.make_tensor_value_info(
        OUTPUT_NAME, TensorProto.FLOAT, ["batch", classes]
    )
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["x_float"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["mean", "axis1"], ["column"]),  # [N, 1]
        helper.make_node("MatMul", ["column", "row"], ["logits"]),  # [N, classes]
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.linspace(-1, 1, classes, dtype=np.float32)[None], "row"),
    ]
    graph = helper.make_graph(nodes, "any_size", [image], [probabilities], initializers)
    return _finish(graph)


def slow_classifier(classes: int = 10, repeats: int = 8, rows: int = 256) -> onnx.ModelProto:
    """A classifier whose cost per image is ``repeats`` [rows,1024]x[1024,1024] MatMuls.

    The mean pixel is broadcast onto a constant [rows, 1024] block, pushed through ``repeats``
    MatMul+Tanh layers sharing one weight, averaged, and the first ``classes`` columns softmaxed.
    About 0.5 GFLOP per repeat per image: tens of milliseconds on one core.
    """
    rng = np.random.default_rng(1)
    width = 1024
    image, probabilities = _io(28, 28, 1, classes)
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], ["x_float"], to=TensorProto.FLOAT),
        helper.make_node(
            "ReduceMean", ["x_float"], ["mean"], axes=[1, 2, 3], keepdims=1
        ),  # [N,1,1,1]
        helper.make_node("Reshape", ["mean", "n11"], ["mean3"]),  # [N,1,1]
        helper.make_node("Mul", ["mean3", "inv255"], ["mean_scaled"]),
        helper.make_node("Add", ["block", "mean_scaled"], ["h0"]),  # [N,rows,width]
    ]
    for i in range(repeats):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "W"], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"h{i + 1}"]))
    nodes += [
        helper.make_node("ReduceMean", [f"h{repeats}"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("Slice", ["pooled", "starts", "ends", "axes_last"], ["logits"]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=-1),
    ]
    initializers = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "n11"),
        numpy_helper.from_array(np.array(1.0 / 255, np.float32), "inv255"),
        numpy_helper.from_array(rng.normal(0, 1, (1, rows, width)).astype(np.float32), "block"),
        numpy_helper.from_array(
            (rng.normal(0, 1, (width, width)) / np.sqrt(width)).astype(np.float32), "W"
        ),
        numpy_helper.from_array(np.array([0], np.int64), "starts"),
        numpy_helper.from_array(np.array([classes], np.int64), "ends"),
        numpy_helper.from_array(np.array([1], np.int64), "axes_last"),
    ]
    graph = helper.make_graph(nodes, "slow_classifier", [image], [probabilities], initializers)
    return _finish(graph)


def metadata_for(
    model_name: str,
    version: int,
    classes: int,
    height: int = 28,
    width: int = 28,
    channels: int = 1,
) -> dict[str, Any]:
    """A ``metadata.json`` dict as docs/serving.md's contract describes it (format_version 1)."""
    return {
        "format_version": 1,
        "model": model_name,
        "version": version,
        "dataset": "synthetic",
        "class_names": [f"class_{i}" for i in range(classes)],
        "inputs": [{"name": INPUT_NAME, "dtype": "uint8", "shape": [-1, height, width, channels]}],
        "outputs": [{"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, classes]}],
        "preprocessing": {
            "height": height,
            "width": width,
            "channels": channels,
            "color_mode": "grayscale" if channels == 1 else "rgb",
            "layout": "NHWC",
            "dtype": "uint8",
            "scale": "0-255",
        },
        "metrics": {},
        "seed": 0,
        "note": "tiny deterministic test model built with onnx.helper",
    }


def write_version(
    root: str | os.PathLike[str],
    model_name: str,
    version: int,
    model: onnx.ModelProto | bytes,
    classes: int = 10,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``<root>/<model>/<version>/`` atomically (temp folder, then rename), as training does.

    ``model`` may be raw bytes, e.g. garbage to make a corrupt version.
    """
    model_dir = Path(root) / model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(version)
    temp = model_dir / f".tmp-{version}-{os.getpid()}"
    if temp.exists():
        shutil.rmtree(temp)
    temp.mkdir()
    data = model if isinstance(model, bytes) else model.SerializeToString()
    (temp / "model.onnx").write_bytes(data)
    meta = metadata if metadata is not None else metadata_for(model_name, version, classes)
    (temp / "metadata.json").write_text(json.dumps(meta, indent=2))
    os.rename(temp, final)
    return final


def write_models_config(
    root: str | os.PathLike[str],
    models: Iterable[str],
    labels: dict[str, dict[str, int]] | None = None,
    policies: dict[str, str] | None = None,
) -> Path:
    """Write a TF Serving ``models.config`` (text protobuf) for ``models`` under ``root``.

    ``policies`` maps a model to a policy body, e.g. ``"all {}"`` or ``"latest { num_versions: 2 }"``.
    """
    labels = labels or {}
    policies = policies or {}
    blocks = []
    for name in models:
        lines = [
            "  config {",
            f'    name: "{name}"',
            f'    base_path: "/models/{name}"',
            '    model_platform: "tensorflow"',
        ]
        if name in policies:
            lines.append(f"    model_version_policy {{ {policies[name]} }}")
        for label, version in labels.get(name, {}).items():
            lines.append(f'    version_labels {{ key: "{label}" value: {version} }}')
        lines.append("  }")
        blocks.append("\n".join(lines))
    path = Path(root) / "models.config"
    path.write_text("model_config_list {\n" + "\n".join(blocks) + "\n}\n")
    return path


def write_repository(
    root: str | os.PathLike[str],
    models: dict[str, Sequence[int]] | None = None,
    builder: Any = linear_classifier,
    labels: dict[str, dict[str, int]] | None = None,
) -> Path:
    """A repository with ``models`` (name -> versions); version v uses seed v, so versions differ."""
    models = models if models is not None else {"tiny": [1]}
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for name, versions in models.items():
        for version in versions:
            write_version(root, name, version, builder(seed=version))
    write_models_config(root, models, labels)
    return root


def sample_images(
    count: int, seed: int = 0, shape: tuple[int, int, int] = (28, 28, 1)
) -> np.ndarray:
    """``count`` random uint8 images in NHWC."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, *shape), dtype=np.uint8)


def reference_predict(model_path: str | os.PathLike[str], images: np.ndarray) -> np.ndarray:
    """Probabilities from in-process ONNX Runtime on the CPU: what a server must return."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    (result,) = session.run([OUTPUT_NAME], {INPUT_NAME: images})
    return np.asarray(result)


def write_labelled_pair(root: Path, model: str) -> Path:
    """``model`` versions 1 and 2 (different weights), labels stable=1 and canary=2, all served:
    the repository the gateway and client tests share."""
    for version in (1, 2):
        write_version(root, model, version, linear_classifier(seed=version))
    write_models_config(
        root, [model], labels={model: {"stable": 1, "canary": 2}}, policies={model: "all {}"}
    )
    return root
