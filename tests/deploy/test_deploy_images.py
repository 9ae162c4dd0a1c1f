"""Dockerfiles, the trainer's entrypoint and .dockerignore.

hadolint (with ShellCheck built in for RUN lines) lints every Dockerfile; a small parser then
checks what the issue asks of each image: the base, the extra installed, no TensorFlow in the
gateway, a non-root user, and that every COPY source exists and survives .dockerignore.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCKERFILES = {
    "gateway": "deploy/docker/gateway.Dockerfile",
    "gateway-cpu": "deploy/docker/gateway.cpu.Dockerfile",
    "trainer": "deploy/docker/trainer.Dockerfile",
    "trainer-cpu": "deploy/docker/trainer.cpu.Dockerfile",
    "bench": "deploy/docker/bench.Dockerfile",
}


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        result.append((keyword.upper(), rest.strip()))
        current = ""
    return result


def final_stage(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def build_args(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)


def test_hadolint_passes(hadolint: str, repo_root: Path):
    paths = [str(repo_root / p) for p in DOCKERFILES.values()]
    result = subprocess.run(
        [hadolint, "--failure-threshold", "style", "--format", "json", *paths],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, json.dumps(json.loads(result.stdout or "[]"), indent=1)


def test_hadolint_is_live(hadolint: str, tmp_path: Path):
    """A Dockerfile with known faults is rejected, so a pass above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN cd /tmp && pip install numpy\n")
    result = subprocess.run(
        [hadolint, "--format", "json", str(bad)], capture_output=True, text=True, timeout=60
    )
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert result.returncode != 0 and {"DL3007", "DL3003"} <= codes


def test_gateway_image_is_cuda13_cudnn9_without_tensorflow(repo_root: Path):
    steps = instructions(repo_root / DOCKERFILES["gateway"])
    base = build_args(steps)["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.04", base), base
    assert [rest for keyword, rest in steps if keyword == "FROM"] == [
        "${CUDA_IMAGE} AS build",
        "${CUDA_IMAGE}",
    ]
    text = " ".join(rest for _, rest in steps)
    assert '".[serve]"' in text
    for name in ("gateway", "gateway-cpu"):
        body = " ".join(rest for _, rest in instructions(repo_root / DOCKERFILES[name]))
        assert "tensorflow" not in body.lower(), f"{name} mentions TensorFlow"
        assert "COPY training" not in body


def test_serve_extra_brings_onnxruntime_gpu_1_31(repo_root: Path):
    """The CUDA 13 base matches what the serve extra installs."""
    import tomllib

    serve = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["serve"]
    (onnxruntime,) = [req for req in serve if req.startswith("onnxruntime-gpu")]
    assert ">=1.31" in onnxruntime and "<1.32" in onnxruntime


def test_trainer_images_install_the_train_extra(repo_root: Path):
    for name in ("trainer", "trainer-cpu"):
        steps = instructions(repo_root / DOCKERFILES[name])
        runs = " ".join(rest for keyword, rest in steps if keyword == "RUN")
        assert '".[train]"' in runs
        assert ("tensorflow[and-cuda]" in runs) == (name == "trainer")
        assert any(
            "trainer-entrypoint" in rest for keyword, rest in steps if keyword == "ENTRYPOINT"
        )


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_final_stage_runs_as_a_non_root_user(name: str, repo_root: Path):
    steps = final_stage(instructions(repo_root / DOCKERFILES[name]))
    users = [rest for keyword, rest in steps if keyword == "USER"]
    assert users, f"{name}: no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_copy_sources_exist_and_are_not_ignored(name: str, repo_root: Path):
    patterns = [
        line.strip()
        for line in (repo_root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for keyword, rest in instructions(repo_root / DOCKERFILES[name]):
        if keyword != "COPY" or "--from=" in rest:
            continue
        sources = [part for part in rest.split() if not part.startswith("--")][:-1]
        for source in sources:
            assert (repo_root / source).exists(), f"{name}: COPY {source} does not exist"
            ignored = [
                p for p in patterns if fnmatch.fnmatch(source, p) or source.startswith(p + "/")
            ]
            assert not ignored, f"{name}: COPY {source} is excluded by .dockerignore {ignored}"


def test_dockerignore_keeps_heavy_and_private_files_out(repo_root: Path):
    patterns = set((repo_root / ".dockerignore").read_text().split())
    assert {".git", ".venv", "model_repository", "runs", "reports", "data", ".env"} <= patterns


def test_trainer_entrypoint_passes_shellcheck(shellcheck: str, repo_root: Path):
    script = repo_root / "deploy/docker/trainer-entrypoint.sh"
    result = subprocess.run([shellcheck, "--shell=sh", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _run_entrypoint(
    repo_root: Path, repository: Path, bin_dir: Path, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **extra,
        "PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
        "REPOSITORY": str(repository),
        "TRAIN_EPOCHS": "2",
    }
    return subprocess.run(
        ["sh", str(repo_root / "deploy/docker/trainer-entrypoint.sh")],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _recording_python(bin_dir: Path, log: Path) -> None:
    """A `python` on PATH that records its arguments: shows whether and how training is called."""
    bin_dir.mkdir()
    probe = bin_dir / "python"
    probe.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    probe.chmod(0o755)


def test_trainer_skips_a_populated_repository(repo_root: Path, tmp_path: Path):
    repository = tmp_path / "models"
    version = repository / "lenet" / "3"
    version.mkdir(parents=True)
    (repository / "models.config").write_text("model_config_list {}\n")
    (version / "saved_model.pb").write_bytes(b"\0")
    (version / "model.onnx").write_bytes(b"\0")
    log = tmp_path / "calls.txt"
    _recording_python(tmp_path / "bin", log)
    result = _run_entrypoint(repo_root, repository, tmp_path / "bin")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
    assert not log.exists(), "training ran although the repository was populated"


def test_trainer_trains_an_empty_repository(repo_root: Path, tmp_path: Path):
    """It calls the training CLI with the documented arguments, then insists on a result."""
    from training.__main__ import build_parser

    repository = tmp_path / "models"
    log = tmp_path / "calls.txt"
    _recording_python(tmp_path / "bin", log)
    result = _run_entrypoint(repo_root, repository, tmp_path / "bin", EXPORT_RESNET50="1")
    train, export = (line.split() for line in log.read_text().splitlines())
    assert train == [
        "-m", "training", "train", "--model", "lenet", "--dataset", "mnist",
        "--epochs", "2", "--repository", str(repository),
    ]  # fmt: skip
    # ... which the real training CLI accepts.
    args = build_parser().parse_args(train[2:])
    assert (args.command, args.model, args.epochs) == ("train", "lenet", 2)
    args = build_parser().parse_args(export[2:])
    assert (args.command, args.model, args.repository) == (
        "export",
        "resnet50_imagenet",
        str(repository),
    )
    # The probe wrote no model, so the script must report failure rather than claim success.
    assert result.returncode == 1
    assert "no servable version" in result.stderr


def test_locust_with_data_prepares_what_the_locustfile_reads(repo_root: Path, tmp_path: Path):
    """The config holds every key the locustfile indexes, and the data file loads."""
    script = repo_root / "deploy/docker/locust-with-data.py"
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('lwd', {str(script)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(module.prepare(dict(BENCH_DIR=sys.argv[1], MODEL_REPOSITORY=sys.argv[2],"
        " BENCH_NUM_IMAGES='64', LOCUST_HOST='http://gateway:8501')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "bench"), str(tmp_path / "no-repository")],
        capture_output=True, text=True, timeout=120, cwd=repo_root,
    )  # fmt: skip
    if result.returncode != 0 and "DatasetUnavailable" in result.stderr:
        pytest.skip(f"MNIST test set not installed here: {result.stderr.strip().splitlines()[-1]}")
    assert result.returncode == 0, result.stderr
    config = json.loads(Path(result.stdout.strip()).read_text())
    locustfile = (repo_root / "benchmarks/locustfile.py").read_text()
    required = set(re.findall(r'config\["(\w+)"\]', locustfile))
    assert required and required <= set(config), required - set(config)
    import numpy as np

    with np.load(config["data_path"]) as data:
        assert len(data["images"]) == 64
    assert Path(config["samples_dir"]).is_dir()


@pytest.mark.parametrize("name", ["gateway", "gateway-cpu"])
def test_gateway_image_environment_is_real_settings(name: str, repo_root: Path):
    """The image configures the gateway through SERVING_* variables the settings really read."""
    from serving.settings import ServingSettings

    steps = final_stage(instructions(repo_root / DOCKERFILES[name]))
    env_text = " ".join(rest for keyword, rest in steps if keyword == "ENV")
    variables = dict(re.findall(r"(SERVING_\w+)=(\S+)", env_text))
    assert {"SERVING_REPOSITORY", "SERVING_DEVICE"} <= set(variables)
    # The one that is no setting: the commit serving_build_info reports, from a build argument.
    assert variables.pop("SERVING_GIT_COMMIT") == "${SERVING_GIT_COMMIT}"
    assert ("ARG", 'SERVING_GIT_COMMIT=""') in steps
    settings = ServingSettings(
        **{key.removeprefix("SERVING_").lower(): value for key, value in variables.items()}
    )
    assert str(settings.repository) == "/models"
    assert settings.device == ("cpu" if name == "gateway-cpu" else "auto")
    assert not [rest for keyword, rest in steps if keyword == "CMD"], "CMD would override the ENV"
