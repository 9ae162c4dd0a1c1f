"""Package-level promises: light import, committed generated code, the CLI."""

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
from tests.clients.clients_loopback import MODEL, LoopbackServers

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


def _png(value: int) -> bytes:
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(np.full((2, 2), value, dtype=np.uint8)).save(encoded, format="PNG")
    return encoded.getvalue()


def test_cli_predict_prints_top_k_labels(
    servers: LoopbackServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "ones.png"
    image.write_bytes(_png(1))  # sum 4 -> class 1
    pixels = tmp_path / "twos.npy"
    np.save(pixels, np.full((2, 2, 1), 2, dtype=np.uint8))  # sum 8 -> class 2
    names = tmp_path / "classes.txt"
    names.write_text("zero\none\ntwo\n")
    args = ["--target", servers.http_url, "--model", MODEL, "--class-names", str(names)]
    assert main(["predict", *args, "--top-k", "2", "--json", str(image), str(pixels)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [entry["top_k"][0]["label"] for entry in result] == ["one", "two"]
    assert len(result[0]["top_k"]) == 2
    grpc_args = ["--target", servers.grpc_target, "--model", MODEL]
    assert main(["predict", *grpc_args, str(image)]) == 0
    assert capsys.readouterr().out.startswith(f"{image}: 1 0.8000")


def test_cli_status_and_metadata(
    servers: LoopbackServers, capsys: pytest.CaptureFixture[str]
) -> None:
    for target, extra in (
        (servers.http_url, []),
        (servers.grpc_target, []),
        (servers.http_url, ["--protocol", "v2"]),
    ):
        assert main(["status", "--target", target, "--model", MODEL, *extra]) == 0
        assert "AVAILABLE" in capsys.readouterr().out
        assert main(["metadata", "--target", target, "--model", MODEL, "--json", *extra]) == 0
        metadata = json.loads(capsys.readouterr().out)
        assert metadata["signatures"]["serving_default"]["inputs"]["image"]["dtype"] == "uint8"


def test_cli_exit_codes_differ_per_error(
    servers: LoopbackServers, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--target", servers.http_url, "--model", "missing", "--json"]) == 4
    assert json.loads(capsys.readouterr().err)["status"] == "NOT_FOUND"
    unreachable = ["--target", "grpc://127.0.0.1:9", "--model", MODEL, "--retries", "1"]
    assert main(["status", *unreachable, "--timeout", "2"]) == 7
    assert (
        main(
            ["predict", "--target", servers.http_url, "--model", MODEL, str(tmp_path / "none.png")]
        )
        == 2
    )
    capsys.readouterr()
