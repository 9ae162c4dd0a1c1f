"""Settings (environment + CLI), version policies, models.config labels, provider selection."""

from __future__ import annotations

import gc
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from serving.gateway import onnx_options
from serving.repository import VersionPolicy, parse_models_config
from serving.runtimes.onnx import (
    AUTO_THREADS,
    CPU,
    GPU_PROVIDERS,
    HEAVY_MODEL_S,
    OnnxOptions,
    OnnxRuntime,
    cuda_provider_options,
)
from serving.settings import ServingSettings, settings_from_args
from tests.metrics_text import metric_samples
from tests.serving.serving_harness import RunningGateway
from tests.tiny_models import (
    lenet_like,
    linear_classifier,
    reference_predict,
    slow_classifier,
    write_models_config,
    write_version,
)

ROOT = Path(__file__).resolve().parents[2]


def test_help_documents_every_option() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "serving", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(result.stdout.split())
    for name in ServingSettings.model_fields:
        assert f"--{name.replace('_', '-')}" in text, name
        assert f"SERVING_{name.upper()}" in text, name


def test_environment_then_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_HTTP_PORT", "9000")
    monkeypatch.setenv("SERVING_BATCHING", "false")
    monkeypatch.setenv("SERVING_API_KEYS", "a,b")
    monkeypatch.setenv("SERVING_PREFERRED_BATCH_SIZES", "4,8")
    settings = settings_from_args(["--http-port", "9100", "--labels", "m:stable=1,m:canary=2"])
    assert settings.http_port == 9100  # the CLI wins over the environment
    assert settings.batching is False
    assert settings.api_keys == ["a", "b"]
    assert settings.preferred_batch_sizes == [4, 8]
    assert settings.label_map() == {"m": {"stable": 1, "canary": 2}}
    assert settings.grpc_port == 8500 and ServingSettings.model_fields["http_port"].default == 8501


def test_invalid_values_exit_2_naming_option_and_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERVING_MAX_BATCH_SIZE", "lots")
    with pytest.raises(SystemExit) as exited:
        settings_from_args(["--workers", "-1"])
    assert exited.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--workers (env SERVING_WORKERS): Input should be greater than or equal to 0" in error
    assert "--max-batch-size (env SERVING_MAX_BATCH_SIZE): Input should be a valid integer" in error


def test_cuda_options_reach_the_provider(capsys: pytest.CaptureFixture[str]) -> None:
    """--cudnn-conv-algo-search and --no-cuda-prefer-nhwc become the CUDA provider's own options
    (ONNX Runtime's names and values); the default is ONNX Runtime's (exhaustive); anything but
    the three choices exits 2 naming the option."""
    default = cuda_provider_options(onnx_options(settings_from_args([])))
    assert default["cudnn_conv_algo_search"] == "EXHAUSTIVE" and default["prefer_nhwc"] == "1"
    argv = ["--cudnn-conv-algo-search", "heuristic", "--no-cuda-prefer-nhwc", "--cuda-graph"]
    chosen = cuda_provider_options(onnx_options(settings_from_args(argv)))
    assert chosen["cudnn_conv_algo_search"] == "HEURISTIC" and chosen["prefer_nhwc"] == "0"
    assert chosen["enable_cuda_graph"] == "1"
    with pytest.raises(SystemExit) as exited:
        settings_from_args(["--cudnn-conv-algo-search", "fastest"])
    assert exited.value.code == 2
    assert "--cudnn-conv-algo-search" in capsys.readouterr().err


def test_runtime_options_in_the_load_log_and_metrics(
    tmp_path: Path,
    start_gateway,
    caplog: pytest.LogCaptureFixture,  # type: ignore[no-untyped-def]
) -> None:
    """What a version runs with (provider, file, sessions, padded sizes, and the CUDA options
    read back from ONNX Runtime, empty on the CPU) is one info series per version and part of
    its AVAILABLE log line; the series goes with the version."""
    write_version(tmp_path, "m", 1, linear_classifier())
    caplog.set_level("INFO", logger="serving.repository")
    gateway: RunningGateway = start_gateway(
        tmp_path, max_batch_size=4, allowed_batch_sizes="1,4", session_per_batch_size=True,
        cudnn_conv_algo_search="heuristic",
    )  # fmt: skip
    (info,) = [s for s in metric_samples(gateway.metrics_text())
               if s.name == "serving_model_runtime_info"]  # fmt: skip
    assert info.value == 1.0
    assert info.labels == {
        "model": "m", "version": "1", "provider": CPU, "model_file": "model.onnx",
        "sessions": "1,4", "padded_batch_sizes": "1,4",
        # CUDA options apply to the CUDA provider only: not claimed for a CPU session
        "prefer_nhwc": "", "cudnn_conv_algo_search": "", "enable_cuda_graph": "",
    }  # fmt: skip
    (line,) = [r.getMessage() for r in caplog.records if "AVAILABLE" in r.getMessage()]
    assert "model_file=model.onnx sessions=1,4 padded_batch_sizes=1,4" in line
    import shutil

    shutil.rmtree(tmp_path / "m" / "1")
    write_version(tmp_path, "m", 2, linear_classifier(seed=2))
    assert gateway.gateway is not None
    gateway.run(gateway.gateway.repository.sync())
    versions = [s.labels["version"] for s in metric_samples(gateway.metrics_text())
                if s.name == "serving_model_runtime_info"]  # fmt: skip
    assert versions == ["2"]


def test_version_policies() -> None:
    versions = {1, 2, 3, 5}
    assert VersionPolicy("latest").select(versions) == {5}
    assert VersionPolicy("latest", num_versions=2).select(versions) == {3, 5}
    assert VersionPolicy("all").select(versions) == versions
    assert VersionPolicy("specific", versions=frozenset({2, 3, 9})).select(versions) == {2, 3}


def test_models_config_parses_policies_and_labels(tmp_path: Path) -> None:
    path = write_models_config(
        tmp_path,
        ["a", "b"],
        labels={"a": {"stable": 1}},
        policies={"a": "specific { versions: 1 versions: 3 }"},
    )
    parsed = parse_models_config(path.read_text())
    policy, labels, folder = parsed["a"]
    assert policy == VersionPolicy("specific", versions=frozenset({1, 3}))
    assert labels == {"stable": 1} and folder == "a"
    assert parsed["b"][0] is None


def test_specific_policy_and_setting_labels_in_a_gateway(tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    for version in (1, 2, 3):
        write_version(tmp_path, "m", version, linear_classifier(seed=version))
    write_models_config(
        tmp_path,
        ["m"],
        labels={"m": {"stable": 1}},
        policies={"m": "specific { versions: 1 versions: 2 }"},
    )
    gateway: RunningGateway = start_gateway(tmp_path, labels=["m:canary=2"])
    assert gateway.gateway is not None
    entry = gateway.gateway.repository.entry("m")
    assert sorted(v.version for v in entry.available()) == [1, 2]
    assert entry.labels == {"stable": 1, "canary": 2}
    assert gateway.gateway.repository.resolve("m", label="canary").version == 2
    assert gateway.gateway.repository.resolve("m").version == 2


def test_provider_decided_after_creation(tmp_path: Path) -> None:
    """The provider is the one the session came up on, whatever ONNX Runtime lists, and fp16 is
    used only there: on a GPU host the fp16 export, elsewhere the CPU with fp32."""
    version_dir = write_version(tmp_path, "m", 1, linear_classifier())
    (version_dir / "model.fp16.onnx").write_bytes((version_dir / "model.onnx").read_bytes())
    runtime = OnnxRuntime(tmp_path / "m" / "1", OnnxOptions(device="auto", precision="fp16"))
    assert runtime.provider == runtime.session.get_providers()[0]
    if runtime.provider in GPU_PROVIDERS:
        assert runtime.model_file.name == "model.fp16.onnx"
        cuda = OnnxRuntime(tmp_path / "m" / "1", OnnxOptions(device="cuda"))
        assert cuda.provider in GPU_PROVIDERS
    else:
        assert runtime.provider == CPU
        assert runtime.model_file.name == "model.onnx"
        with pytest.raises(RuntimeError, match="device=cuda"):
            OnnxRuntime(tmp_path / "m" / "1", OnnxOptions(device="cuda"))


def test_fp16_on_cpu_serves_the_fp16_file(tmp_path: Path) -> None:
    """--fp16-on-cpu keeps model.fp16.onnx on the CPU provider (for checking its answers on a
    host without a GPU); without it the CPU falls back to fp32. The files are told apart by
    their outputs: the real fp16 conversion rounds the weights."""
    from training.export import convert_to_fp16

    version_dir = write_version(tmp_path, "m", 1, lenet_like())
    convert_to_fp16(version_dir / "model.onnx", version_dir / "model.fp16.onnx")
    images = np.random.default_rng(0).integers(0, 256, (32, 28, 28, 1), dtype=np.uint8)

    def run(options: OnnxOptions) -> tuple[str, np.ndarray]:
        runtime = OnnxRuntime(version_dir, options)
        try:
            return runtime.model_file.name, runtime.predict({"image": images})["probabilities"]
        finally:
            runtime.close()

    forced_name, forced = run(OnnxOptions(device="cpu", precision="fp16", fp16_on_cpu=True))
    plain_name, plain = run(OnnxOptions(device="cpu", precision="fp16"))
    fp32_name, fp32 = run(OnnxOptions(device="cpu"))
    assert (forced_name, plain_name, fp32_name) == ("model.fp16.onnx", "model.onnx", "model.onnx")
    assert np.array_equal(plain, fp32)
    difference = np.abs(forced - fp32).max()
    assert 0 < difference < 5e-3
    settings = settings_from_args(["--precision", "fp16", "--fp16-on-cpu"])
    assert settings.fp16_on_cpu and not ServingSettings().fp16_on_cpu


def test_int8_precision_serves_the_int8_file_on_every_wire(tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    """--precision int8 serves model.int8.onnx (training.quantize's static QDQ file), and every
    wire answers what that file gives offline; a version without one fails to load, saying so,
    rather than serve fp32's answers."""
    from clients import Client
    from training.quantize import quantize_file

    images = np.random.default_rng(0).integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    version_dir = write_version(tmp_path / "repo", "m", 1, lenet_like())
    quantize_file(version_dir / "model.onnx", version_dir / "model.int8.onnx", images)
    write_version(tmp_path / "repo", "plain", 1, lenet_like())  # no int8 file
    offline_int8 = reference_predict(version_dir / "model.int8.onnx", images)
    assert np.abs(offline_int8 - reference_predict(version_dir / "model.onnx", images)).max() > 0
    gateway: RunningGateway = start_gateway(tmp_path / "repo", precision="int8")
    for target, protocol in ((gateway.http_url, "rest"), (gateway.http_url, "v2"),
                             (f"grpc://{gateway.grpc_target}", None)):  # fmt: skip
        with Client(target, protocol=protocol, timeout=30) as client:
            served = np.asarray(client.predict("m", {"image": images}))
        np.testing.assert_allclose(served, offline_int8, rtol=1e-5, atol=1e-6, err_msg=protocol)
    (info,) = [s for s in metric_samples(gateway.metrics_text())
               if s.name == "serving_model_runtime_info" and s.labels["model"] == "m"]  # fmt: skip
    assert info.labels["model_file"] == "model.int8.onnx"
    status = httpx.get(f"{gateway.http_url}/v1/models/plain", timeout=10).json()
    error = status["model_version_status"][0]["status"]["error_message"]
    assert "--precision int8 but" in error and "has no model.int8.onnx" in error, status


def test_intra_op_threads_follow_the_model_by_default(tmp_path: Path) -> None:
    """Auto: a light model keeps one intra-op thread (its cost is per call, and the other cores
    belong to the event loop); a heavy one gets one thread per core. An explicit number wins."""
    assert ServingSettings().intra_op_threads == AUTO_THREADS
    light = OnnxRuntime(
        write_version(tmp_path, "light", 1, lenet_like()), OnnxOptions(device="cpu")
    )
    heavy_dir = write_version(tmp_path, "heavy", 1, slow_classifier(repeats=4))
    heavy = OnnxRuntime(heavy_dir, OnnxOptions(device="cpu"))
    assert light._one_image_seconds() < HEAVY_MODEL_S < heavy._one_image_seconds()
    assert light.intra_op_threads == 1
    assert heavy.intra_op_threads == 0
    # The reopened session is the one that serves, and answers like a single-threaded one.
    pinned = OnnxRuntime(heavy_dir, OnnxOptions(device="cpu", intra_op_threads=1))
    assert pinned.intra_op_threads == 1
    feeds = {spec.name: np.full((2, 28, 28, 1), 7, spec.dtype) for spec in heavy.inputs}
    np.testing.assert_allclose(
        heavy.predict(feeds)["probabilities"], pinned.predict(feeds)["probabilities"], rtol=1e-5
    )


def test_startup_heap_is_frozen_out_of_collector_scans(tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    write_version(tmp_path, "m", 1, linear_classifier(seed=1))
    gateway: RunningGateway = start_gateway(tmp_path)
    assert gateway.gateway is not None
    served = gateway.gateway.repository.resolve("m")
    # gc.get_objects() lists only the generations a collection scans; frozen objects are not there
    scanned = gc.get_objects()
    assert gc.get_freeze_count() > 0
    assert not any(obj is served for obj in scanned)
    assert not any(obj is gateway.gateway.app for obj in scanned)


def test_model_named_in_config_but_not_exported(tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    import httpx

    write_version(tmp_path, "m", 1, linear_classifier())
    write_models_config(tmp_path, ["m", "ghost"])
    gateway: RunningGateway = start_gateway(tmp_path)
    assert httpx.get(f"{gateway.http_url}/v2/health/ready", timeout=10).json() == {"ready": True}
    reply = httpx.get(f"{gateway.http_url}/v1/models/ghost", timeout=10)
    assert reply.status_code == 404 and "model 'ghost' has no versions" in reply.json()["error"]


def test_io_binding_paths_match_plain_run(tmp_path: Path) -> None:
    """The GPU code paths (IO binding; CUDA-graph style fixed buffers updated in place) run on
    the CPU device here and must give what session.run gives."""
    import numpy as np

    from tests.tiny_models import reference_predict, sample_images

    write_version(tmp_path, "m", 1, linear_classifier())
    runtime = OnnxRuntime(tmp_path / "m" / "1", OnnxOptions(device="cpu"))
    runtime.io_device = "cpu"
    expected = reference_predict(tmp_path / "m" / "1" / "model.onnx", sample_images(4, seed=3))
    bound = runtime._predict_io_binding({"image": sample_images(4, seed=3)})
    np.testing.assert_allclose(bound["probabilities"], expected, rtol=1e-6)
    for seed in (3, 4):  # the second call reuses the buffers bound by the first
        graph = runtime._predict_cuda_graph({"image": sample_images(4, seed=seed)})
        want = reference_predict(tmp_path / "m" / "1" / "model.onnx", sample_images(4, seed=seed))
        np.testing.assert_allclose(graph["probabilities"], want, rtol=1e-6)
    with pytest.raises(RuntimeError, match="captured for"):
        runtime._predict_cuda_graph({"image": sample_images(2)})
