"""Test data for a benchmark run, prepared in the parent process.

The Locust workers must not import TensorFlow, requests or urllib3 (gevent's monkey-patching
breaks on them), and should not spend their start-up loading datasets. So the parent picks the
test images, their true labels and the model's offline predictions (ONNX Runtime, in-process, on
``model.onnx``) and writes them to one ``.npz``; the workers only read that file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

BENCH_DATA_ENV = "BENCH_CONFIG"


@dataclass(frozen=True)
class ModelFiles:
    """Where one model version lives on disk and what its metadata says."""

    directory: Path
    onnx_path: Path | None
    metadata: dict[str, Any]

    @property
    def class_names(self) -> list[str] | None:
        names = self.metadata.get("class_names")
        return list(names) if names else None

    @property
    def recorded_examples(self) -> int | None:
        """How many test images training's evaluation used (None when not recorded)."""
        value = (self.metadata.get("metrics") or {}).get("examples")
        return int(value) if isinstance(value, (int, float)) else None

    @property
    def recorded_accuracy(self) -> float | None:
        """Test accuracy measured by training's evaluation, if the metadata records it."""
        metrics = self.metadata.get("metrics") or {}
        for key in ("accuracy", "test_accuracy"):
            value = metrics.get(key)
            if isinstance(value, (int, float)):
                return float(value)
        return None


def find_model(
    repository: str | Path, model: str, version: int | None = None, onnx_name: str = "model.onnx"
) -> ModelFiles | None:
    """The newest (or the given) version directory of ``model`` in a model repository."""
    base = Path(repository) / model
    if not base.is_dir():
        return None
    if version is None:
        versions = sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())
        if not versions:
            return None
        version = versions[-1]
    directory = base / str(version)
    if not directory.is_dir():
        return None
    metadata_path = directory / "metadata.json"
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    onnx_path = directory / onnx_name
    return ModelFiles(directory, onnx_path if onnx_path.exists() else None, metadata)


def model_to_dataset_classes(
    model_class_names: list[str] | None, dataset_class_names: list[str], num_outputs: int
) -> np.ndarray:
    """Map each model output index to the dataset's label index, by class name.

    A served answer is judged by what the model says it means (its ``class_names``), not by the
    position alone: a model whose outputs are permuted but whose metadata says so is right, and
    one whose metadata no longer matches its outputs is wrong. Outputs without a dataset class map
    to -1 (always wrong).
    """
    lookup_names = set(dataset_class_names)
    if not model_class_names or not lookup_names.intersection(model_class_names):
        # Names that share nothing with the dataset (e.g. "class_0") say nothing: go by position.
        return np.arange(num_outputs, dtype=np.int64)
    lookup = {name: i for i, name in enumerate(dataset_class_names)}
    return np.asarray([lookup.get(name, -1) for name in model_class_names], dtype=np.int64)


def offline_outputs(onnx_path: str | Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The model's output (probabilities, [N, classes] float32) from ONNX Runtime on the CPU."""
    from benchmarks.ceiling import create_session

    session = create_session(onnx_path, providers="CPUExecutionProvider")
    input_name = session.get_inputs()[0].name
    outputs = [
        np.asarray(session.run(None, {input_name: images[start : start + batch_size]})[0])
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs).astype(np.float32) if outputs else np.zeros((0, 0), np.float32)


def offline_predictions(
    onnx_path: str | Path, images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """The model's own answers (argmax of its output) from ONNX Runtime on the CPU."""
    outputs = offline_outputs(onnx_path, images, batch_size)
    return outputs.argmax(axis=1).astype(np.int64) if len(outputs) else np.zeros(0, np.int64)


#: ``--synthetic``: random pixels of the model's declared input; answers checked against offline
#: ONNX Runtime, no accuracy.
SYNTHETIC = "synthetic"
#: ``--images DIR`` as a dataset name: ``images:DIR`` (one folder per class).
IMAGES_PREFIX = "images:"
SYNTHETIC_IMAGES = 1024


class DataMismatch(ValueError):
    """The benchmark's data cannot be sent to the model as it is; the message says what to do."""


def data_source(dataset: str | None, images: str | None, synthetic: bool) -> str:
    """The ``dataset`` value for ``--dataset``, ``--images DIR`` or ``--synthetic``."""
    if images and synthetic:
        raise DataMismatch("--images and --synthetic exclude each other")
    if images:
        return f"{IMAGES_PREFIX}{images}"
    return SYNTHETIC if synthetic else (dataset or "mnist")


def model_input(model_files: ModelFiles | None) -> tuple[str, tuple[int, ...]] | None:
    """(dtype, [-1, H, W, C]) of the model's image input: from metadata.json, else model.onnx."""
    if model_files is None:
        return None
    inputs = model_files.metadata.get("inputs")
    if isinstance(inputs, list) and inputs and isinstance(inputs[0], dict):
        shape = inputs[0].get("shape")
        if isinstance(shape, list) and all(isinstance(d, int) for d in shape):
            return str(inputs[0].get("dtype", "uint8")), tuple(shape)
    if model_files.onnx_path is None:
        return None
    from benchmarks.ceiling import create_session

    (first, *_) = create_session(
        model_files.onnx_path, providers="CPUExecutionProvider"
    ).get_inputs()
    dtype = first.type.removeprefix("tensor(").removesuffix(")")
    dtype = {"float": "float32", "double": "float64"}.get(dtype, dtype)
    return dtype, tuple(d if isinstance(d, int) else -1 for d in first.shape)


def _output_classes(model_files: ModelFiles | None) -> int:
    """How many classes the model's first output scores (metadata.json, else model.onnx)."""
    outputs = model_files.metadata.get("outputs") if model_files else None
    if isinstance(outputs, list) and outputs and isinstance(outputs[0], dict):
        shape = outputs[0].get("shape")
        if isinstance(shape, list) and shape and isinstance(shape[-1], int) and shape[-1] > 0:
            return shape[-1]
    if model_files is None or model_files.onnx_path is None:
        raise DataMismatch(
            "--synthetic checks the answers against model.onnx, which is not in --repository"
        )
    from benchmarks.ceiling import create_session

    session = create_session(model_files.onnx_path, providers="CPUExecutionProvider")
    last = session.get_outputs()[0].shape[-1]
    if not isinstance(last, int):
        raise DataMismatch("cannot tell how many classes the model's output has")
    return last


def _image_geometry(model_files: ModelFiles | None, what: str) -> tuple[int, int, int]:
    spec = model_input(model_files)
    if spec is None:
        raise DataMismatch(
            f"{what} needs the model's input size: no metadata.json or model.onnx for it in "
            "--repository"
        )
    dtype, shape = spec
    if dtype != "uint8" or len(shape) != 4 or min(shape[1:]) < 1:
        raise DataMismatch(
            f"the model takes {dtype} {list(shape)}, not uint8 [batch, height, width, channels] "
            "images: export it with `python -m training export --from ...`"
        )
    return shape[1], shape[2], shape[3]


def load_image_folder(
    directory: str | Path, height: int, width: int, channels: int
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The image-folder layout (``DIR/<class>/<image>``, PNG or JPEG) as uint8 NHWC images of the
    model's size and colour mode, labels (the folder's index) and class names (folder names)."""
    from clients.errors import InvalidInput
    from clients.images import load_image_folder as read_folder

    try:
        return read_folder(directory, height, width, channels)
    except InvalidInput as error:
        raise DataMismatch(error.message) from None


def load_test_set(
    dataset: str, model_files: ModelFiles | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Test images (uint8 NHWC), labels and class names: a dataset via training's
    TensorFlow-free loader, an image folder (``images:DIR``) or ``synthetic`` pixels (labels -1:
    the offline answers stand in for them), sized to the model's input."""
    if dataset == SYNTHETIC:
        height, width, channels = _image_geometry(model_files, "--synthetic")
        images = np.random.default_rng(seed).integers(
            0, 256, (SYNTHETIC_IMAGES, height, width, channels), dtype=np.uint8
        )
        names = (model_files.class_names if model_files else None) or [
            str(i) for i in range(_output_classes(model_files))
        ]
        return images, np.full(len(images), -1, np.int64), names
    if dataset.startswith(IMAGES_PREFIX):
        geometry = _image_geometry(model_files, "--images")
        return load_image_folder(dataset.removeprefix(IMAGES_PREFIX), *geometry)
    from training.data import load_dataset

    ds = load_dataset(dataset)
    spec = model_input(model_files)
    if spec is not None and len(spec[1]) == 4:
        dtype, shape = spec
        fits = all(d in (-1, n) for d, n in zip(shape[1:], ds.x_test.shape[1:], strict=True))
        if dtype != "uint8" or not fits:
            size = "x".join(map(str, ds.x_test.shape[1:]))
            raise DataMismatch(
                f"the {dataset} test images are uint8 {size}, the model takes {dtype} "
                f"{list(shape)}: benchmark it with --images DIR (one folder per class) or "
                "--synthetic"
            )
    return ds.x_test, ds.y_test, list(ds.class_names)


def prepare_test_data(
    out_path: str | Path,
    dataset: str,
    model_files: ModelFiles | None,
    num_images: int | None = 1024,
    seed: int = 0,
) -> dict[str, Any]:
    """Write images, labels, offline predictions and the class mapping to ``out_path`` (.npz).

    Returns a summary (counts, offline accuracy, reference accuracy) for the report.
    """
    x_test, y_test, dataset_classes = load_test_set(dataset, model_files, seed)
    synthetic = dataset == SYNTHETIC
    if synthetic and (model_files is None or model_files.onnx_path is None):
        raise DataMismatch(
            "--synthetic checks the answers against model.onnx, which is not in --repository"
        )
    if num_images and num_images < len(x_test):
        order = np.random.default_rng(seed).permutation(len(x_test))[:num_images]
        order.sort()  # keep the dataset's order: easier to trace an image back
        images, labels = x_test[order], y_test[order]
    else:
        images, labels = x_test, y_test
    images = np.ascontiguousarray(images)
    model_classes = model_files.class_names if model_files else None
    num_outputs = len(model_classes) if model_classes else len(dataset_classes)
    mapping = model_to_dataset_classes(model_classes, dataset_classes, num_outputs)
    offline = np.full(len(images), -1, dtype=np.int64)
    offline_model: np.ndarray | None = None
    if model_files and model_files.onnx_path:
        offline_model = offline_predictions(model_files.onnx_path, images)
        in_range = (offline_model >= 0) & (offline_model < len(mapping))
        offline = np.where(in_range, mapping[np.clip(offline_model, 0, len(mapping) - 1)], -1)
    if synthetic:  # no true labels: the offline answers are what the served ones must be
        labels = offline.copy()
    np.savez(
        out_path,
        images=images,
        labels=labels.astype(np.int64),
        offline=offline,
        model_to_dataset=mapping,
        class_names=np.asarray(dataset_classes),
    )
    has_offline = offline_model is not None
    own = not synthetic and not dataset.startswith(IMAGES_PREFIX)
    return {
        "dataset": dataset,
        "num_images": len(images),
        "seed": seed,
        "class_names": dataset_classes,
        "model_class_names": model_classes,
        "has_offline": has_offline,
        "offline_accuracy": float((offline == labels).mean()) if has_offline else None,
        # Measured on the training data set: comparable with that set's test images only.
        "recorded_accuracy": model_files.recorded_accuracy if model_files and own else None,
        "recorded_examples": model_files.recorded_examples if model_files and own else None,
        "labels": (
            "offline ONNX Runtime answers (synthetic inputs: no accuracy)"
            if synthetic
            else "folder names"
            if dataset.startswith(IMAGES_PREFIX)
            else "the data set's"
        ),
        "onnx_path": str(model_files.onnx_path) if model_files and model_files.onnx_path else None,
    }
