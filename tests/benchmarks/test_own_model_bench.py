"""Benchmarks for any model: `run` and `rate` with `--synthetic` and `--images DIR` against a
served model the user brought (32x32 RGB, 5 classes, exported with `training export --from`), a
clear error when the data does not fit its input, and a target that answers nothing failing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from benchmarks.__main__ import main
from benchmarks.servers import Server, free_port, gateway
from tests.training.test_own_model import CLASSES, onnx_nchw_classifier
from training.own_model import OwnModelOptions, export_own_model

MODEL = "torchy"
SHORT = ["--duration", "2s", "--warmup", "1s", "--users", "2", "--ceiling-seconds", "0.2"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def own_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("own-bench")
    onnx.save(onnx_nchw_classifier(), str(work / "torch_like.onnx"))
    export_own_model(
        OwnModelOptions(
            source=work / "torch_like.onnx", name=MODEL, class_names=",".join(CLASSES),
            repository=work / "repository", scale=1 / 255, mean="0.485,0.456,0.406",
            std="0.229,0.224,0.225", fp16=False,
        )
    )  # fmt: skip
    return work / "repository"


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two of the model's classes and one it does not know, 4 images each, of other sizes."""
    root = tmp_path_factory.mktemp("own-images")
    rng = np.random.default_rng(8)
    for name in ("cat", "dog", "unicorn"):
        (root / name).mkdir()
        for i in range(4):
            pixels = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def served(own_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("own-gateway") / "gateway.log"
    with gateway(
        own_repository, model=MODEL, log_path=log, extra_args=["--poll-interval-s", "0"]
    ) as server:
        yield server


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_run_synthetic_checks_answers_against_offline(served, own_repository, tmp_path) -> None:
    code = main(
        ["run", "--target", served.http, "--model", MODEL, "--repository", str(own_repository),
         "--protocol", "v2", "--synthetic", "--out", str(tmp_path), *SHORT]
    )  # fmt: skip
    report = results(tmp_path)
    assert code == 0, report["failure_reasons"]
    assert report["accuracy"]["count"] > 0 and report["accuracy"]["agreement"] == 1.0
    assert report["accuracy"]["recorded_accuracy"] is None


def test_run_images_measures_accuracy_against_folder_names(
    served, own_repository, image_folder, tmp_path
) -> None:
    code = main(
        ["run", "--target", served.http, "--model", MODEL, "--repository", str(own_repository),
         "--protocol", "image", "--images", str(image_folder), "--out", str(tmp_path), *SHORT]
    )  # fmt: skip
    report = results(tmp_path)
    assert code == 0, report["failure_reasons"]
    accuracy = report["accuracy"]
    assert accuracy["class_names"] == ["cat", "dog", "unicorn"]
    assert accuracy["count"] > 0 and accuracy["agreement"] == 1.0
    assert accuracy["accuracy"] == accuracy["offline_accuracy"]


def test_data_that_does_not_fit_the_model_is_a_clear_error(
    served, own_repository, tmp_path, capsys
) -> None:
    code = main(
        ["run", "--target", served.http, "--model", MODEL, "--repository", str(own_repository),
         "--out", str(tmp_path), *SHORT]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        "error: the mnist test images are uint8 28x28x1, the model takes uint8 [-1, 32, 32, 3]: "
        "benchmark it with --images DIR (one folder per class) or --synthetic\n"
    )
    code = main(
        ["run", "--target", served.http, "--model", MODEL, "--repository", str(own_repository),
         "--images", str(tmp_path), "--out", str(tmp_path / "out"), *SHORT]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: --images {tmp_path} holds no class folders with PNG or JPEG images "
        "(DIR/<class name>/<image>)\n"
    )


def test_rate_synthetic_and_images(served, own_repository, image_folder, tmp_path) -> None:
    for data, out in ((["--synthetic"], "synthetic"), (["--images", str(image_folder)], "images")):
        code = main(
            ["rate", "--target", f"gateway={served.http},{served.grpc}", "--model", MODEL,
             "--repository", str(own_repository), "--protocol", "v2,grpc", "--rates", "20",
             "--duration", "1s", "--warmup", "0s", "--cooldown", "0s", "--max-lag-ms", "500", "--out",
             str(tmp_path / out), *data]
        )  # fmt: skip
        report = results(tmp_path / out)
        # 3: a load point the generator could not keep up with (a busy machine), not a failure
        assert code in (0, 3) and report["failure"] is False, report["failure_reasons"]
        for series in report["series"]:
            assert series["accuracy"]["agreement"] == 1.0, (out, series["protocol"])


def test_rate_against_a_target_that_answers_nothing_fails(own_repository, tmp_path, capsys) -> None:
    """It used to print "skipped ... not reachable" and exit 0 having measured nothing."""
    code = main(
        ["rate", "--target", f"nothing=http://127.0.0.1:{free_port()}", "--model", MODEL,
         "--repository", str(own_repository), "--synthetic", "--rates", "20", "--duration", "1s",
         "--warmup", "0s", "--out", str(tmp_path)]
    )  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "nothing rest: FAILED, no answer to " in out
    assert "FAILURE: nothing rest: no answer to " in out
    assert results(tmp_path)["failure"] is True


def test_accuracy_over_an_image_folder_equals_offline(
    served, own_repository, image_folder, capsys
) -> None:
    args = ["accuracy", "--target", f"grpc://{served.grpc}", "--model", MODEL]
    code = main([*args, "--repository", str(own_repository), "--images", str(image_folder)])
    assert code == 0, capsys.readouterr().out
    code = main([*args, "--repository", str(own_repository)])
    assert code == 2
    assert capsys.readouterr().err.startswith("error: the mnist test images are uint8 28x28x1")
