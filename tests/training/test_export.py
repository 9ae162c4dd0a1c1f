"""Export: the repository layout, the signature contract, the parity gate and the TF Serving files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.wire import read_models_config
from training.export import (
    FP32_TOLERANCE,
    ExportRequest,
    ParityError,
    existing_versions,
    gate_and_publish,
    onnx_predict,
    saved_model_predict,
    stage_version,
    write_repository_configs,
)

METADATA_KEYS = {
    "format_version", "model", "version", "dataset", "class_names", "signature_name", "inputs",
    "outputs", "preprocessing", "metrics", "training", "seed", "library_versions",
    "dataset_fingerprint", "exported_at", "parity", "files", "source", "note",
}  # fmt: skip


def test_export_writes_the_repository_layout(exported_lenet) -> None:
    result, repository = exported_lenet
    version_dir = repository / "lenet" / "1"
    assert result.version_dir == version_dir
    for name in ("saved_model.pb", "variables", "model.onnx", "model.fp16.onnx", "metadata.json"):
        assert (version_dir / name).exists(), name
    assert (version_dir / "assets.extra" / "tf_serving_warmup_requests").is_file()
    # Nothing half-written is left next to the version.
    assert [p.name for p in (repository / "lenet").iterdir()] == ["1"]
    for config in ("models.config", "batching.config", "monitoring.config"):
        assert (repository / config).is_file()
    assert result.metrics["examples"] == 1000
    assert (result.run_dir / "test_metrics.json").is_file()
    assert (result.run_dir / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (result.run_dir / "test_confusion_matrix.png").is_file()
    assert (result.run_dir / "training_log.csv").is_file()
    assert (result.run_dir / "checkpoints" / "best_val_loss.keras").is_file()
    assert (result.run_dir / "checkpoints" / "best_val_accuracy.keras").is_file()
    assert any((result.run_dir / "tensorboard" / "confusion_matrix").iterdir())


def test_saved_model_signature_contract(exported_lenet) -> None:
    import tensorflow as tf

    _, repository = exported_lenet
    loaded = tf.saved_model.load(str(repository / "lenet" / "1"))
    signature = loaded.signatures["serving_default"]
    (inputs,) = signature.structured_input_signature[1].values()
    assert inputs.name == "image" and inputs.dtype == tf.uint8
    assert inputs.shape.as_list() == [None, 28, 28, 1]
    assert list(signature.structured_outputs) == ["probabilities"]


def test_onnx_keeps_names_and_dynamic_batch(exported_lenet) -> None:
    import onnxruntime as ort

    _, repository = exported_lenet
    for name in ("model.onnx", "model.fp16.onnx"):
        session = ort.InferenceSession(
            str(repository / "lenet" / "1" / name), providers=["CPUExecutionProvider"]
        )
        (onnx_input,), (onnx_output,) = session.get_inputs(), session.get_outputs()
        assert onnx_input.name == "image" and onnx_input.type == "tensor(uint8)"
        assert not isinstance(onnx_input.shape[0], int)  # symbolic batch dimension
        assert onnx_output.name == "probabilities" and onnx_output.type == "tensor(float)"


def test_parity_holds_on_published_files(exported_lenet) -> None:
    from training.data import load_dataset

    _, repository = exported_lenet
    version_dir = repository / "lenet" / "1"
    images = load_dataset("mnist").x_test[:1000]
    reference = saved_model_predict(version_dir, images)
    candidate = onnx_predict(version_dir / "model.onnx", images)
    assert np.abs(reference - candidate).max() <= FP32_TOLERANCE
    assert (reference.argmax(1) == candidate.argmax(1)).all()
    parity = json.loads((version_dir / "metadata.json").read_text())["parity"]
    assert parity["fp32"]["passed"] and parity["fp32"]["images"] >= 1000
    assert parity["fp16"]["passed"] and parity["fp16"]["max_abs_diff"] <= 5e-3


def test_metadata_is_complete(exported_lenet) -> None:
    result, repository = exported_lenet
    metadata = json.loads((repository / "lenet" / "1" / "metadata.json").read_text())
    assert set(metadata) == METADATA_KEYS
    assert metadata["inputs"] == [{"name": "image", "dtype": "uint8", "shape": [-1, 28, 28, 1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}]
    assert metadata["class_names"] == [str(d) for d in range(10)]
    assert metadata["preprocessing"]["height"] == 28 and metadata["preprocessing"]["channels"] == 1
    assert metadata["metrics"]["accuracy"] == result.metrics["accuracy"]
    assert metadata["seed"] == 7 and len(metadata["dataset_fingerprint"]) == 64
    assert metadata["library_versions"]["tensorflow"].startswith("2.")
    assert metadata["files"]["onnx"] == "model.onnx"


def _message_class(package: str, name: str, fields: list[tuple[str, int, int, str]]):
    """A message class built from a descriptor: TF Serving's schema for files whose .proto the
    tensorflow-serving-api wheel does not ship (batching and monitoring configs)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package}/{name}.proto",
        package=package,
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file.message_type.add(name=name)
    for field_name, number, field_type, type_name in fields:
        field = message.field.add(name=field_name, number=number, type=field_type, label=1)
        if type_name:
            field.type_name = type_name
        if field_name == "allowed_batch_sizes":
            field.label = 3
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{package}.{name}"))


def test_tf_serving_configs_parse_as_text_protobuf(exported_lenet) -> None:
    from google.protobuf import descriptor_pb2, text_format
    from tensorflow_serving.config import model_server_config_pb2

    _, repository = exported_lenet
    config = text_format.Parse(
        (repository / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
    )
    (model,) = config.model_config_list.config
    assert model.name == "lenet" and model.base_path == "/models/lenet"
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.HasField("all")
    assert dict(model.version_labels) == {"stable": 1}

    message, int64, int64_value = (
        descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
        descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        ".google.protobuf.Int64Value",
    )
    batching_parameters = _message_class(
        "tensorflow.serving",
        "BatchingParameters",
        [
            ("max_batch_size", 1, message, int64_value),
            ("batch_timeout_micros", 2, message, int64_value),
            ("max_enqueued_batches", 3, message, int64_value),
            ("num_batch_threads", 4, message, int64_value),
            ("allowed_batch_sizes", 6, int64, ""),
            ("pad_variable_length_inputs", 7, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, ""),
        ],
    )
    batching = text_format.Parse(
        (repository / "batching.config").read_text(), batching_parameters()
    )
    assert batching.max_batch_size.value == 64
    assert list(batching.allowed_batch_sizes)[-1] == 64  # TF Serving: last must equal the max

    prometheus_config = _message_class(
        "tensorflow.serving",
        "PrometheusConfig",
        [
            ("enable", 1, descriptor_pb2.FieldDescriptorProto.TYPE_BOOL, ""),
            ("path", 2, descriptor_pb2.FieldDescriptorProto.TYPE_STRING, ""),
        ],
    )
    text = (repository / "monitoring.config").read_text()
    body = text[text.index("prometheus_config {") + len("prometheus_config {") : text.rindex("}")]
    monitoring = text_format.Parse(body, prometheus_config())
    assert monitoring.enable and monitoring.path == "/monitoring/prometheus/metrics"


def test_warmup_file_holds_prediction_logs(exported_lenet) -> None:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    _, repository = exported_lenet
    path = repository / "lenet" / "1" / "assets.extra" / "tf_serving_warmup_requests"
    batch_sizes = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        assert request.model_spec.name == "lenet"
        assert request.model_spec.signature_name == "serving_default"
        batch_sizes.append(tf.make_ndarray(request.inputs["image"]).shape[0])
    assert batch_sizes == [1, 8]


def _corrupt_onnx(path: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weights = numpy_helper.to_array(biggest).copy()
    weights *= 1.5  # plausible-looking but wrong weights
    biggest.CopyFrom(numpy_helper.from_array(weights, biggest.name))
    onnx.save(model, str(path))


def test_corrupted_export_is_refused(exported_lenet, tmp_path: Path) -> None:
    import keras

    from training.data import load_dataset

    result, _ = exported_lenet
    model = keras.models.load_model(result.run_dir / "checkpoints" / "best_val_loss.keras")
    request = ExportRequest(
        model_name="lenet",
        dataset="mnist",
        class_names=[str(d) for d in range(10)],
        parity_images=load_dataset("mnist").x_test[:1000],
        fp16=False,
    )
    repository = tmp_path / "repo"
    staging = stage_version(model, request, repository)
    _corrupt_onnx(staging / "model.onnx")
    with pytest.raises(ParityError, match=r"max \|diff\| .* \(limit 0.0001\), argmax agreement"):
        gate_and_publish(model, request, staging)
    assert not staging.exists()
    assert existing_versions(repository / "lenet") == []


def test_configs_keep_other_labels_and_point_stable_at_newest(exported_lenet, tmp_path) -> None:
    import shutil

    _, repository = exported_lenet
    repo = tmp_path / "repo"
    shutil.copytree(repository, repo)
    shutil.copytree(repo / "lenet" / "1", repo / "lenet" / "2")
    # A hand edit in TF Serving's one-line style, indented its own way: read by the text format,
    # not by the layout training writes.
    text = (repo / "models.config").read_text()
    text = text.replace(
        "version_labels {", 'version_labels { key: "canary" value: 2 }\n  version_labels {', 1
    )
    (repo / "models.config").write_text(text)
    write_repository_configs(repo, "/srv/models")
    (model,) = read_models_config((repo / "models.config").read_text()).model_config_list.config
    assert dict(model.version_labels) == {"canary": 2, "stable": 2}
    assert model.base_path == "/srv/models/lenet"


def test_cli_reports_missing_data_with_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training", "train", "--dataset", "kmnist", "--data-dir",
         str(tmp_path), "--repository", str(tmp_path / "repo")],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
        check=False,
    )  # fmt: skip
    assert result.returncode == 3
    assert "dataset 'kmnist' is not available" in result.stderr


def test_parity_verdicts_on_known_arrays() -> None:
    from training.export import compare_predictions

    reference = np.array([[0.7, 0.2, 0.1], [0.30001, 0.29999, 0.4], [0.5, 0.49995, 0.00005]])
    same = compare_predictions(reference, reference.copy(), 1e-4, 1.0)
    assert same["passed"] and same["max_abs_diff"] == 0.0
    # Flipping a near-tie (margin 5e-5 < 2 x tolerance) is not an error...
    tie_flip = reference.copy()
    tie_flip[2] = [0.49996, 0.49999, 0.00005]
    verdict = compare_predictions(reference, tie_flip, 1e-4, 1.0)
    assert verdict["argmax_disagreements"] == 1 and verdict["decisive_disagreements"] == 0
    assert verdict["passed"]
    # ...but a decisive flip is, and so is a difference beyond tolerance.
    decisive = reference.copy()
    decisive[0] = [0.2, 0.7, 0.1]
    assert not compare_predictions(reference, decisive, 1e-4, 1.0)["passed"]
    drift = reference + np.array([2e-4, -2e-4, 0.0])
    assert not compare_predictions(reference, drift, 1e-4, 1.0)["passed"]


def test_fp16_parity_report_reproduces_the_export_s_conversion(exported_lenet, tmp_path) -> None:
    """benchmarks.lab.fp16_parity's whole-graph variant is the published fp16 file's conversion (the
    same probabilities), and a variant keeping Conv in float32 has float32 Conv weights."""
    import onnx
    from onnx import numpy_helper

    from benchmarks.lab import fp16_parity
    from training.data import load_dataset

    _, repository = exported_lenet
    version_dir = repository / "lenet" / "1"
    dataset = load_dataset("mnist")
    images, labels = dataset.x_test[:500], dataset.y_test[:500]
    rows = fp16_parity.compare(version_dir, images, labels, [(), ("Conv",)])
    assert [row["variant"] for row in rows] == [
        "fp32 (model.onnx)", "fp16, whole graph", "fp16, Conv in fp32",
    ]  # fmt: skip
    published = onnx_predict(version_dir / "model.fp16.onnx", images)
    reference = saved_model_predict(version_dir, images)
    assert rows[1]["max_abs_diff"] == pytest.approx(float(np.abs(reference - published).max()))
    assert rows[0]["max_abs_diff"] <= FP32_TOLERANCE
    assert rows[0]["accuracy"] == pytest.approx(float(np.mean(reference.argmax(1) == labels)))

    kept = tmp_path / "conv-fp32.onnx"
    fp16_parity.fp16_variant(version_dir / "model.onnx", kept, ("Conv",))
    graph = onnx.load(str(kept)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    conv_weights = [weights[node.input[1]] for node in graph.node if node.op_type == "Conv"]
    assert conv_weights and all(w.dtype == np.float32 for w in conv_weights)
    assert any(w.dtype == np.float16 for w in weights.values())
    assert "| fp16, Conv in fp32 |" in fp16_parity.table(rows, len(images))
