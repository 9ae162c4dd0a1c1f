"""int8 for a published version: ONNX Runtime's static quantization, calibrated on training images,
behind an accuracy gate, published as the next version.

Static QDQ quantization (int8 weights per output channel, uint8 activations) of the convolutions
and matrix products, with activation ranges calibrated on ``calibration_images`` training images
chosen with a recorded seed. The gate runs the fp32 and the int8 file in-process on the model's
whole test set: the int8 file is published only if its accuracy is at most ``max_drop_points``
below fp32's; otherwise nothing is published and the error gives both accuracies. A model with no
labelled test set (the ImageNet-shaped ResNet50, made for speed checks) is calibrated on random
pixels and published only with ``allow_ungated``, which metadata.json then says.

The new version is a copy of the source version (SavedModel, fp32 and fp16 ONNX, warmup records)
plus ``model.int8.onnx``, written into a hidden staging directory and renamed into place like
every export, with ``metadata.json`` recording the calibration, both accuracies and the quantized
ops. Serve it with ``python -m serving --precision int8``.

    python -m training quantize --repository model_repository --model lenet
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from training.export import (
    DEFAULT_SERVING_BASE_PATH,
    INPUT_NAME,
    Int8Request,
    existing_versions,
    library_versions,
    next_version,
    publish_version,
    write_repository_configs,
)

INT8_FILE = "model.int8.onnx"
CALIBRATION_IMAGES = 256
MAX_DROP_POINTS = 0.5
#: what gets int8 kernels; the rest (the graph's own preprocessing, softmax) stays float
OP_TYPES = ("Conv", "MatMul", "Gemm")


class QuantizationError(RuntimeError):
    """The int8 file failed its gate or could not be made; nothing was published."""


class _DropMessages(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quantize_file(fp32: Path, output: Path, calibration: np.ndarray) -> dict[str, int]:
    """Write the int8 QDQ model; returns how many nodes of each type got int8 weights."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {INPUT_NAME: batch}

    # ONNX Runtime advises its pre-processing step on the root logger at every call; our graphs
    # come from tf2onnx already optimised, so the advice is noise in the export's output.
    advice = _DropMessages("pre-process")
    logging.getLogger().addFilter(advice)
    try:
        quantize_static(
            str(fp32), str(output), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
            op_types_to_quantize=list(OP_TYPES),
        )  # fmt: skip
    finally:
        logging.getLogger().removeFilter(advice)
    graph = onnx.load(str(output)).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    return dict(
        Counter(
            node.op_type
            for node in graph.node
            if node.op_type in OP_TYPES and any(name in dequantized for name in node.input[1:2])
        )
    )


def _predict(path: Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: images[i : i + batch]})[0] for i in range(0, len(images), batch)]
    )


def gate(
    fp32: Path, int8: Path, images: np.ndarray, labels: np.ndarray | None, max_drop_points: float
) -> dict[str, Any]:
    """fp32 against int8 on ``images``: accuracies (with labels), agreement, the verdict."""
    reference, quantized = _predict(fp32, images), _predict(int8, images)
    report: dict[str, Any] = {
        "images": len(images),
        "argmax_agreement": float((reference.argmax(1) == quantized.argmax(1)).mean()),
        "max_abs_diff": float(np.abs(reference - quantized).max()),
        "max_drop_points": max_drop_points,
    }
    if labels is None:
        report["passed"] = None  # nothing to judge by: see allow_ungated
        return report
    report["accuracy_fp32"] = float((reference.argmax(1) == labels).mean())
    report["accuracy_int8"] = float((quantized.argmax(1) == labels).mean())
    drop = (report["accuracy_fp32"] - report["accuracy_int8"]) * 100
    report["drop_points"] = drop
    report["passed"] = drop <= max_drop_points
    return report


SCHEME = "ONNX Runtime static QDQ: int8 weights per channel, uint8 activations"


def int8_request(
    dataset: Any, seed: int, calibration_images: int = CALIBRATION_IMAGES,
    max_drop_points: float = MAX_DROP_POINTS,
) -> Int8Request:  # fmt: skip
    """Calibration on ``calibration_images`` training images picked with ``seed``, the gate on
    the whole test set (``dataset``: a ``training.data.Dataset``)."""
    picks = np.random.default_rng(seed).choice(len(dataset.x_train), calibration_images, False)
    return Int8Request(
        dataset.x_train[np.sort(picks)], dataset.x_test, dataset.y_test,
        f"{calibration_images} {dataset.name} training images, seed {seed}", max_drop_points,
    )  # fmt: skip


def refusal(report: dict[str, Any]) -> str:
    """Why an int8 file failed its gate, in one line."""
    return (
        f"int8 accuracy {report['accuracy_int8'] * 100:.2f}% is {report['drop_points']:.2f} "
        f"points below fp32's {report['accuracy_fp32'] * 100:.2f}% on the "
        f"{report['images']:,} test images (at most {report['max_drop_points']:g} allowed)"
    )


def add_int8(staging: Path, request: Int8Request) -> dict[str, Any]:
    """Quantize a staged export's model.onnx and gate it; a failing file is removed and the
    record says why (the fp32 and fp16 files are published all the same)."""
    ops = quantize_file(staging / "model.onnx", staging / INT8_FILE, request.calibration)
    report = gate(staging / "model.onnx", staging / INT8_FILE, request.test_images,
                  request.test_labels, request.max_drop_points)  # fmt: skip
    record: dict[str, Any] = {"calibration": request.calibrated_on, "scheme": SCHEME,
                              "quantized_ops": ops, "gate": report}  # fmt: skip
    if not report["passed"]:
        (staging / INT8_FILE).unlink()
        record["dropped"] = refusal(report)
    return record


MIN_GATE_IMAGES = 200


def labelled_images(
    directory: Path, class_names: list[str], input_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``DIR/<class name>/<image>`` as images of the model's input and labels (the index of each
    folder's name among the model's class names); a folder naming no class is refused."""
    from clients.errors import InvalidInput
    from clients.images import load_image_folder

    height, width, channels = input_shape
    try:
        images, folder_labels, folders = load_image_folder(directory, height, width, channels)
    except InvalidInput as error:
        raise QuantizationError(error.message) from None
    unknown = [name for name in folders if name not in class_names]
    if unknown:
        raise QuantizationError(
            f"--images {directory}: folders {unknown} name no class of the model "
            f"(its classes: {', '.join(class_names[:10])}{' ...' if len(class_names) > 10 else ''})"
        )
    to_model = np.asarray([class_names.index(name) for name in folders])
    return images, to_model[folder_labels]


def quantize_version(
    repository: Path,
    model: str,
    version: int | None = None,
    calibration_images: int = CALIBRATION_IMAGES,
    seed: int = 0,
    max_drop_points: float = MAX_DROP_POINTS,
    allow_ungated: bool = False,
    calibration: np.ndarray | None = None,
    serving_base_path: str = DEFAULT_SERVING_BASE_PATH,
    images_dir: Path | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Quantize ``model``'s version (default: the newest) and publish it as the next version.

    ``calibration``: images to calibrate on instead of the training split (tests use it to break
    the quantization on purpose). ``images_dir``: labelled images (``DIR/<class>/<image>``) to
    calibrate and gate on instead of the dataset, for a model that names none (one you brought). Raises QuantizationError, publishing nothing, when the gate fails.
    """
    model_dir = Path(repository) / model
    versions = existing_versions(model_dir) if model_dir.is_dir() else []
    if not versions:
        raise QuantizationError(f"no published version of {model!r} under {repository}")
    source_version = version if version is not None else max(versions)
    source = model_dir / str(source_version)
    if not (source / "model.onnx").is_file():
        raise QuantizationError(f"{source} has no model.onnx to quantize")
    metadata = json.loads((source / "metadata.json").read_text())
    (declared,) = metadata["inputs"][:1] or [{}]
    if declared.get("name") != INPUT_NAME or declared.get("dtype") != "uint8":
        raise QuantizationError(
            f"{source} takes {declared.get('dtype')} {declared.get('name')!r}, not uint8 "
            f"{INPUT_NAME!r} images: int8 calibration feeds pixels (a --keep-float-input export "
            "cannot be quantized here)"
        )
    input_shape = tuple(declared["shape"][1:])
    rng = np.random.default_rng(seed)
    images = labels = None
    dataset_name = metadata.get("dataset")
    if images_dir is not None:
        images, labels = labelled_images(images_dir, metadata["class_names"], input_shape)
        if len(images) < MIN_GATE_IMAGES:
            raise QuantizationError(
                f"--images {images_dir} holds {len(images)} images; the gate needs at least "
                f"{MIN_GATE_IMAGES} to judge a {max_drop_points:g}-point drop"
            )
        picks = np.sort(rng.choice(len(images), min(calibration_images, len(images)), False))
        if calibration is None:
            calibration = images[picks]
        calibrated_on = (
            f"{len(calibration)} of the {len(images)} images in {images_dir}, seed {seed} (the "
            "gate runs on all of them)"
        )
    elif dataset_name:
        from training.data import load_dataset

        dataset = load_dataset(dataset_name)
        plan = int8_request(dataset, seed, calibration_images, max_drop_points)
        images, labels = plan.test_images, plan.test_labels
        calibrated_on = plan.calibrated_on
        if calibration is None:
            calibration = plan.calibration
        else:
            calibrated_on = f"{len(calibration)} images given by the caller"
    else:
        if not allow_ungated:
            raise QuantizationError(
                f"{model!r} names no dataset, so no test set can gate its int8 file: give "
                "labelled images with --images DIR (DIR/<class name>/<image>), or "
                "--allow-ungated to publish it calibrated on random pixels, for speed checks only"
            )
        if calibration is None:
            calibration = rng.integers(0, 256, (calibration_images, *input_shape), np.uint8)
        images = rng.integers(0, 256, (256, *input_shape), np.uint8)
        calibrated_on = f"{len(calibration)} random images, seed {seed} (no dataset)"
    staging = model_dir / f".staging-int8-{uuid.uuid4().hex[:12]}"
    try:
        shutil.copytree(source, staging)
        quantized_ops = quantize_file(staging / "model.onnx", staging / INT8_FILE, calibration)
        report = gate(staging / "model.onnx", staging / INT8_FILE, images, labels, max_drop_points)
        if report["passed"] is False:
            raise QuantizationError(f"{refusal(report)}: not published")
        chosen = next_version(model_dir)
        metadata.update(
            version=chosen,
            exported_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            library_versions=library_versions(),
        )
        metadata["files"] = {**metadata.get("files", {}), "onnx_int8": INT8_FILE}
        metadata["int8"] = {
            "derived_from_version": source_version,
            "calibration": calibrated_on,
            "scheme": SCHEME,
            "quantized_ops": quantized_ops,
            "gate": report if report["passed"] is not None else {**report, "passed": "ungated"},
        }
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))
        target = publish_version(staging, chosen)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    write_repository_configs(Path(repository), serving_base_path)
    return target, metadata
