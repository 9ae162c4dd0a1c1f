"""Export a trained Keras model to the model repository, behind a parity gate.

One version directory holds everything both servers need (see docs/serving.md, "The model repository"):
the SavedModel for TF Serving (signature `serving_default`: `image` -> `probabilities`), its
warmup records, `model.onnx` (tf2onnx), `model.fp16.onnx`, and `metadata.json`.

The steps are explicit so each can be tested on real files:
`stage_version` writes a candidate into a hidden staging directory, `run_parity_gate` compares
ONNX Runtime against the SavedModel, and `publish_version` renames the staging directory into
place (atomic on one filesystem), so a server polling the repository never sees half a model.
A candidate whose fp32 ONNX disagrees with the SavedModel is refused; an fp16 file that fails
its (looser) gate is dropped and the reason recorded, while the fp32 model is still published.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from clients import wire
from clients.wire import DEFAULT_SIGNATURE as SIGNATURE_NAME

METADATA_FORMAT_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
ONNX_OPSET = 17
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 5e-3
FP32_MIN_AGREEMENT = 1.0
FP16_MIN_AGREEMENT = 0.999
MIN_PARITY_IMAGES = 1000
WARMUP_BATCH_SIZES = (1, 8)
DEFAULT_SERVING_BASE_PATH = "/models"


class ParityError(RuntimeError):
    """An ONNX export disagrees with the SavedModel beyond tolerance; it is not published."""


class ExportError(RuntimeError):
    """The export could not be written (converter failure, version already exists, ...)."""


@dataclass
class Int8Request:
    """An int8 file for the export (``training.quantize``): the images its activation ranges are
    calibrated on, and the labelled test set whose accuracy gates it."""

    calibration: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    calibrated_on: str  # recorded in metadata.json, e.g. "256 mnist training images, seed 42"
    max_drop_points: float = 0.5


@dataclass
class ExportRequest:
    """What to export and the facts to record with it in metadata.json."""

    model_name: str
    dataset: str | None
    class_names: list[str]
    parity_images: np.ndarray
    metrics: dict[str, Any] | None = None
    seed: int | None = None
    dataset_fingerprint: str | None = None
    preprocessing: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    note: str | None = None
    fp16: bool = True
    #: [-1, H, W, C] of the exported `image` input; None: the Keras model's own input shape.
    input_shape: tuple[int, ...] | None = None
    #: Where a model the user brought came from (`python -m training export --from`).
    source: dict[str, Any] | None = None
    #: metadata.json's `inputs` when the exported graph keeps the user's own float input
    #: (`--keep-float-input`); None: the uint8 `image` input.
    inputs: list[dict[str, Any]] | None = None
    #: Also `model.int8.onnx`, dropped (the reason recorded) when its accuracy gate fails.
    int8: Int8Request | None = None


# --- versions and repository configuration -------------------------------------------------------


def existing_versions(model_dir: Path) -> list[int]:
    """Published versions of one model: integer directory names, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir: Path) -> int:
    versions = existing_versions(model_dir)
    return versions[-1] + 1 if versions else 1


def _existing_labels(config_path: Path) -> dict[str, dict[str, int]]:
    """The labels someone set in models.config, to keep them on regeneration (none, with a
    warning, when the file is not TF Serving's text format: it is about to be rewritten)."""
    if not config_path.is_file():
        return {}
    from google.protobuf import text_format

    try:
        config = wire.read_models_config(config_path.read_text())
    except text_format.ParseError as exc:
        print(f"warning: {config_path} does not parse ({exc}); its labels are not kept")
        return {}
    return {model.name: dict(model.version_labels) for model in config.model_config_list.config}


def write_repository_configs(
    repository: Path, serving_base_path: str = DEFAULT_SERVING_BASE_PATH
) -> dict[str, Path]:
    """Regenerate TF Serving's models.config, batching.config and monitoring.config.

    Every model with a published version is listed, all versions are served, `stable` points at
    the newest version; other labels already in models.config are kept while their version exists.
    `serving_base_path` is where the repository is mounted inside the TF Serving container.
    """
    repository.mkdir(parents=True, exist_ok=True)
    config_path = repository / "models.config"
    kept_labels = _existing_labels(config_path)
    config = wire.ModelServerConfig()
    for model_dir in sorted(p for p in repository.iterdir() if p.is_dir()):
        versions = [
            v
            for v in existing_versions(model_dir)
            if (model_dir / str(v) / "saved_model.pb").is_file()
        ]
        if not versions:
            continue
        labels = {k: v for k, v in kept_labels.get(model_dir.name, {}).items() if v in versions}
        labels["stable"] = versions[-1]
        model = config.model_config_list.config.add(
            name=model_dir.name,
            base_path=f"{serving_base_path.rstrip('/')}/{model_dir.name}",
            model_platform="tensorflow",
        )
        model.model_version_policy.all.SetInParent()
        for key, value in sorted(labels.items()):
            model.version_labels[key] = value
    files = {
        "models.config": config_path,
        "batching.config": repository / "batching.config",
        "monitoring.config": repository / "monitoring.config",
    }
    _write_atomically(
        config_path,
        "# Generated by `python -m training`; TF Serving --model_config_file.\n"
        + wire.format_models_config(config),
    )
    _write_atomically(
        files["batching.config"],
        "# TF Serving --batching_parameters_file (with --enable_batching).\n"
        "max_batch_size { value: 64 }\n"
        "batch_timeout_micros { value: 2000 }\n"
        "max_enqueued_batches { value: 256 }\n"
        "num_batch_threads { value: 4 }\n"
        "allowed_batch_sizes: 8\n"
        "allowed_batch_sizes: 16\n"
        "allowed_batch_sizes: 32\n"
        "allowed_batch_sizes: 64\n"
        "pad_variable_length_inputs: false\n",
    )
    _write_atomically(
        files["monitoring.config"],
        "# TF Serving --monitoring_config_file: Prometheus metrics on the REST port.\n"
        "prometheus_config {\n"
        "  enable: true\n"
        '  path: "/monitoring/prometheus/metrics"\n'
        "}\n",
    )
    return files


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- staging ---------------------------------------------------------------------------------------


def stage_version(
    model: Any,
    request: ExportRequest,
    repository: Path,
    writer: Callable[[Any, Path], None] | None = None,
) -> Path:
    """Write the SavedModel, warmup records and ONNX files into a hidden staging directory.

    `writer(model, path)` writes the SavedModel (default: a Keras model that takes uint8 pixels).
    """
    model_dir = repository / request.model_name
    model_dir.mkdir(parents=True, exist_ok=True)
    # A dot-name: TF Serving and the gateway only load integer directories.
    staging = model_dir / f".staging-{uuid.uuid4().hex[:12]}"
    try:
        (writer or _write_saved_model)(model, staging)
        _write_warmup_requests(staging, request)
        convert_to_onnx(staging, staging / "model.onnx")
        if request.fp16:
            convert_to_fp16(staging / "model.onnx", staging / "model.fp16.onnx")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def _write_saved_model(model: Any, path: Path) -> None:
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()
    archive.track(model)
    input_shape = [None, *model.input_shape[1:]]
    archive.add_endpoint(
        name=SIGNATURE_NAME,
        fn=lambda image: {OUTPUT_NAME: model(image, training=False)},
        input_signature=[tf.TensorSpec(input_shape, tf.uint8, name=INPUT_NAME)],
    )
    archive.write_out(str(path), verbose=False)


def _write_warmup_requests(saved_model_dir: Path, request: ExportRequest) -> None:
    """TF Serving replays these PredictionLog records at load time, before it reports ready."""
    import tensorflow as tf
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    assets = saved_model_dir / "assets.extra"
    assets.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(assets / "tf_serving_warmup_requests")) as writer:
        for batch_size in WARMUP_BATCH_SIZES:
            batch = request.parity_images[:batch_size]
            predict = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(
                    name=request.model_name, signature_name=SIGNATURE_NAME
                )
            )
            predict.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(batch))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=predict)
            )
            writer.write(log.SerializeToString())


def convert_to_onnx(saved_model_dir: Path, output: Path, opset: int = ONNX_OPSET) -> None:
    """tf2onnx in a child process: it keeps the signature's tensor names and a dynamic batch."""
    command = [
        sys.executable, "-m", "tf2onnx.convert",
        "--saved-model", str(saved_model_dir),
        "--signature_def", SIGNATURE_NAME,
        "--opset", str(opset),
        "--output", str(output),
    ]  # fmt: skip
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0 or not output.is_file():
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        raise ExportError(f"tf2onnx failed (exit {result.returncode}):\n{tail}")


def convert_to_fp16(source: Path, output: Path) -> None:
    """Half-precision weights and compute, float32/uint8 inputs and outputs kept for clients."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    half = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(output))


# --- parity gate ---------------------------------------------------------------------------------


def saved_model_predict(
    saved_model_dir: Path, images: np.ndarray, batch_size: int = 256
) -> np.ndarray:
    """Probabilities from the SavedModel exactly as TF Serving would run it (its signature)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    signature = loaded.signatures[SIGNATURE_NAME]
    outputs = [
        signature(**{INPUT_NAME: tf.constant(images[i : i + batch_size])})[OUTPUT_NAME].numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outputs)


def onnx_predict(onnx_path: Path, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities from ONNX Runtime on the CPU."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    # `image`, or the model's own input in a version that keeps it (--keep-float-input)
    (model_input,) = session.get_inputs()
    return np.concatenate(
        [
            session.run([OUTPUT_NAME], {model_input.name: images[i : i + batch_size]})[0]
            for i in range(0, len(images), batch_size)
        ]
    )


def compare_predictions(
    reference: np.ndarray, candidate: np.ndarray, tolerance: float, min_agreement: float
) -> dict[str, Any]:
    """Max absolute difference and argmax agreement of two probability arrays, with a verdict.

    An argmax disagreement on an image whose reference top-two probabilities lie within twice the
    tolerance of each other is a tie at that precision, not an error (barely trained models with
    near-uniform outputs produce many); the gate passes when the agreement reaches `min_agreement`
    or when every disagreement is such a tie, and the difference stays within `tolerance`.
    """
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    disagree = reference.argmax(axis=1) != candidate.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:] if reference.shape[1] > 1 else reference
    margin = top_two[:, -1] - top_two[:, 0]
    decisive_disagreements = int(np.sum(disagree & (margin > 2 * tolerance)))
    agreement = float(1.0 - np.mean(disagree)) if len(disagree) else 1.0
    max_abs = float(difference.max()) if difference.size else 0.0
    return {
        "images": len(reference),
        "max_abs_diff": max_abs,
        "mean_abs_diff": float(difference.mean()) if difference.size else 0.0,
        "argmax_agreement": agreement,
        "argmax_disagreements": int(disagree.sum()),
        "decisive_disagreements": decisive_disagreements,
        "tolerance": tolerance,
        "min_agreement": min_agreement,
        "passed": bool(
            max_abs <= tolerance and (agreement >= min_agreement or decisive_disagreements == 0)
        ),
    }


def run_parity_gate(
    staging: Path,
    images: np.ndarray,
    reference: np.ndarray | None = None,
    reference_name: str | None = None,
) -> dict[str, Any]:
    """Compare the staged ONNX files with the staged SavedModel on `images`.

    With `reference` (the probabilities of the model a user brought, on `images`), every staged
    file is compared with it instead, the SavedModel (when there is one) included.
    Raises `ParityError` (saying by how much) when fp32 fails; drops a failing fp16 file.
    """
    if len(images) < MIN_PARITY_IMAGES:
        raise ExportError(
            f"the parity gate needs at least {MIN_PARITY_IMAGES} images, got {len(images)}"
        )
    report: dict[str, Any]
    if reference is None:
        reference = saved_model_predict(staging, images)
        report = {"reference": "SavedModel serving_default (TensorFlow)"}
        against = "the SavedModel"
    else:
        report = {"reference": reference_name or "the model given"}
        against = reference_name or "the model given"
        if (staging / "saved_model.pb").is_file():
            saved = compare_predictions(
                reference, saved_model_predict(staging, images), FP32_TOLERANCE, FP32_MIN_AGREEMENT
            )
            report["saved_model"] = saved
            if not saved["passed"]:
                raise ParityError(
                    f"the SavedModel disagrees with {against}: max |diff| "
                    f"{saved['max_abs_diff']:.3g} (limit {FP32_TOLERANCE:g}), argmax agreement "
                    f"{saved['argmax_agreement'] * 100:.2f}% on {saved['images']} images; "
                    "not published"
                )
    fp32 = compare_predictions(
        reference, onnx_predict(staging / "model.onnx", images), FP32_TOLERANCE, FP32_MIN_AGREEMENT
    )
    report["fp32"] = fp32
    if not fp32["passed"]:
        raise ParityError(
            f"ONNX fp32 export disagrees with {against}: max |diff| "
            f"{fp32['max_abs_diff']:.3g} (limit {FP32_TOLERANCE:g}), argmax agreement "
            f"{fp32['argmax_agreement'] * 100:.2f}% (required {FP32_MIN_AGREEMENT * 100:.2f}%; "
            f"{fp32['decisive_disagreements']} disagreements are not ties) on {fp32['images']} "
            "images; not published"
        )
    fp16_path = staging / "model.fp16.onnx"
    if fp16_path.is_file():
        fp16 = compare_predictions(
            reference, onnx_predict(fp16_path, images), FP16_TOLERANCE, FP16_MIN_AGREEMENT
        )
        report["fp16"] = fp16
        if not fp16["passed"]:
            fp16_path.unlink()
            fp16["dropped"] = (
                f"max |diff| {fp16['max_abs_diff']:.3g} (limit {FP16_TOLERANCE:g}), agreement "
                f"{fp16['argmax_agreement'] * 100:.2f}% (required {FP16_MIN_AGREEMENT * 100:.1f}%)"
            )
    return report


# --- metadata and publishing ---------------------------------------------------------------------


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in (
        "tensorflow",
        "keras",
        "tf2onnx",
        "onnx",
        "onnxruntime-gpu",
        "onnxruntime",
        "numpy",
    ):
        try:
            versions[package] = importlib_metadata.version(package)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def build_metadata(
    model: Any, request: ExportRequest, version: int, parity: dict[str, Any], staging: Path
) -> dict[str, Any]:
    """The metadata.json document (format in docs/serving.md, "The model repository")."""
    shape = request.input_shape or model.input_shape
    input_shape = [-1, *(int(d) for d in shape[1:])]
    height, width, channels = input_shape[1:]
    files = {"onnx": "model.onnx"}
    if (staging / "saved_model.pb").is_file():
        files = {"saved_model": "saved_model.pb", **files}
    if (staging / "model.fp16.onnx").is_file():
        files["onnx_fp16"] = "model.fp16.onnx"
    if (staging / "model.int8.onnx").is_file():
        files["onnx_int8"] = "model.int8.onnx"
    if (staging / "assets.extra" / "tf_serving_warmup_requests").is_file():
        files["tf_serving_warmup"] = "assets.extra/tf_serving_warmup_requests"
    preprocessing = {
        "layout": "NHWC",
        "dtype": "uint8",
        "height": height,
        "width": width,
        "channels": channels,
        "color_mode": "grayscale" if channels == 1 else "rgb",
        "scale": "inside the model; send raw 0-255 pixels",
        **request.preprocessing,
    }
    return {
        "format_version": METADATA_FORMAT_VERSION,
        "model": request.model_name,
        "version": version,
        "dataset": request.dataset,
        "class_names": list(request.class_names),
        "signature_name": SIGNATURE_NAME,
        "inputs": request.inputs or [{"name": INPUT_NAME, "dtype": "uint8", "shape": input_shape}],
        "outputs": [
            {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, len(request.class_names)]}
        ],
        "preprocessing": preprocessing,
        "metrics": request.metrics,
        "training": request.training,
        "seed": request.seed,
        "library_versions": library_versions(),
        "dataset_fingerprint": request.dataset_fingerprint,
        "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parity": parity,
        "files": files,
        "source": request.source,
        "note": request.note,
    }


def publish_version(staging: Path, version: int) -> Path:
    """Rename the staging directory to its version number: the atomic step servers observe."""
    target = staging.parent / str(version)
    if target.exists():
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(f"{target} already exists; versions are immutable, pick another")
    os.rename(staging, target)
    return target


def export_model(
    model: Any,
    request: ExportRequest,
    repository: Path,
    version: int | None = None,
    serving_base_path: str = DEFAULT_SERVING_BASE_PATH,
) -> tuple[Path, dict[str, Any]]:
    """Stage, gate and publish one version; regenerate the TF Serving configs.

    Returns (version directory, metadata). Raises `ParityError` without publishing anything when
    the fp32 ONNX export disagrees with the SavedModel.
    """
    repository = Path(repository)
    model_dir = repository / request.model_name
    if version is not None and (model_dir / str(version)).exists():
        raise ExportError(f"{model_dir / str(version)} already exists; versions are immutable")
    created = [path for path in (repository, model_dir) if not path.exists()]
    try:
        staging = stage_version(model, request, repository)
        target, metadata = gate_and_publish(model, request, staging, version)
    except BaseException:
        remove_if_empty(created)
        raise
    write_repository_configs(repository, serving_base_path)
    return target, metadata


def remove_if_empty(created: list[Path]) -> None:
    """Remove the folders an export created (innermost first) when a failure left them empty."""
    for path in reversed(created):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


def gate_and_publish(
    model: Any,
    request: ExportRequest,
    staging: Path,
    version: int | None = None,
    reference: np.ndarray | None = None,
    reference_name: str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the parity gate on a staged candidate, write metadata.json, publish it.

    `reference`: see `run_parity_gate`. On any failure the staging directory is removed and
    nothing is published.
    """
    try:
        parity = run_parity_gate(staging, request.parity_images, reference, reference_name)
        int8 = None
        if request.int8 is not None:
            from training.quantize import add_int8

            int8 = add_int8(staging, request.int8)
        chosen = version if version is not None else next_version(staging.parent)
        metadata = build_metadata(model, request, chosen, parity, staging)
        if int8 is not None:
            metadata["int8"] = int8
        (staging / "metadata.json").write_text(json.dumps(metadata, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return publish_version(staging, chosen), metadata
