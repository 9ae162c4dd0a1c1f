"""Package-level promises: light import, committed generated code, the CLI (against the real
gateway)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients.cli import EXIT_CODES, main
from clients.errors import EXCEPTION_FOR_STATUS
from tests.clients.gateways import MODEL, reference
from tests.serving.serving_harness import RunningGateway
from tests.tiny_models import sample_images

REPO = Path(__file__).resolve().parents[2]


def test_import_clients_loads_neither_tensorflow_nor_keras() -> None:
    code = (
        "import sys, clients; "
        "heavy = [m for m in ('tensorflow', 'keras', 'grpc', 'httpx') if m in sys.modules]; "
        "print(heavy)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"  # grpc and httpx load on first use, too


def test_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    # A subprocess: in-process protoc crashes when another test module has loaded TensorFlow.
    subprocess.run(
        [sys.executable, "-m", "clients.proto.regenerate", str(tmp_path)], cwd=REPO, check=True
    )
    generated = sorted((tmp_path / "clients" / "proto").glob("*_pb2.py*"))
    committed = sorted((REPO / "clients" / "proto").glob("*_pb2.py*"))
    assert [p.name for p in generated] == [p.name for p in committed]
    for fresh, ours in zip(generated, committed, strict=True):
        assert fresh.read_bytes() == ours.read_bytes(), f"{ours.name} is stale: run `make proto`"


def test_help_documents_every_command_and_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for command in ("predict", "status", "metadata"):
        assert command in text
    for code in EXIT_CODES:
        assert f"{code:>2}  " in text
    exit_codes = [cls.exit_code for cls in set(EXCEPTION_FOR_STATUS.values())]
    assert len(exit_codes) == len(set(exit_codes))  # distinct per error kind


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(encoded, format="PNG")
    return encoded.getvalue()


def test_cli_predict_prints_top_k_labels(
    gateway: RunningGateway, repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = sample_images(2, seed=8)
    image = tmp_path / "digit.png"
    image.write_bytes(_png(first))
    pixels = tmp_path / "digit.npy"
    np.save(pixels, second)
    names = tmp_path / "classes.txt"
    names.write_text("".join(f"digit-{i}\n" for i in range(10)))
    expected = reference(repository, MODEL, 1, np.stack([first, second]))
    best = [int(row.argmax()) for row in expected]
    args = ["--model", MODEL, "--version", "1", "--class-names", str(names), "--top-k", "2"]
    assert (
        main(["predict", "--target", gateway.http_url, *args, "--json", str(image), str(pixels)])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert [entry["top_k"][0]["label"] for entry in result] == [f"digit-{i}" for i in best]
    assert [len(entry["top_k"]) for entry in result] == [2, 2]
    grpc_target = f"grpc://{gateway.grpc_target}"
    assert main(["predict", "--target", grpc_target, *args, str(image)]) == 0
    score = float(expected[0].max())
    assert capsys.readouterr().out.startswith(f"{image}: digit-{best[0]} {score:.4f}")
    for target in (gateway.http_url, grpc_target):
        protocol = ["--protocol", "v2"] if target == gateway.http_url else []
        # Without --class-names, labelled from the gateway's metadata (class_<i> in tiny's).
        assert main(["predict", "--target", target, *protocol, "--model", MODEL, "--version", "1",
                     "--json", str(image)]) == 0  # fmt: skip
        (answer,) = json.loads(capsys.readouterr().out)
        assert answer["top_k"][0]["label"] == f"class_{best[0]}"


def test_cli_status_and_metadata(
    gateway: RunningGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    for target, extra in (
        (gateway.http_url, []),
        (f"grpc://{gateway.grpc_target}", []),
        (gateway.http_url, ["--protocol", "v2"]),
    ):
        assert main(["status", "--target", target, "--model", MODEL, *extra]) == 0
        assert "AVAILABLE" in capsys.readouterr().out
        assert main(["metadata", "--target", target, "--model", MODEL, "--json", *extra]) == 0
        metadata = json.loads(capsys.readouterr().out)
        assert metadata["signatures"]["serving_default"]["inputs"]["image"]["dtype"] == "uint8"


def test_cli_exit_codes_differ_per_error(
    gateway: RunningGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--target", gateway.http_url, "--model", "missing", "--json"]) == 4
    assert json.loads(capsys.readouterr().err)["status"] == "NOT_FOUND"
    unreachable = ["--target", "grpc://127.0.0.1:9", "--model", MODEL, "--retries", "1"]
    assert main(["status", *unreachable, "--timeout", "2"]) == 7
    missing_file = str(tmp_path / "none.png")
    assert main(["predict", "--target", gateway.http_url, "--model", MODEL, missing_file]) == 2
    capsys.readouterr()
