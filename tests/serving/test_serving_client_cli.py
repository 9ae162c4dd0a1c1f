"""The client CLI's exit codes against the real gateway: each failure the gateway answers with
maps to its documented code (``clients.cli.EXIT_CODES``) over TF Serving REST, V2 and gRPC."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clients.cli import EXIT_CODES, main
from tests.serving.serving_harness import RunningGateway, model_busy
from tests.tiny_models import sample_images

MODEL = "tiny"
SLOW = "slow"
StartGateway = Callable[..., RunningGateway]


def _targets(gateway: RunningGateway) -> list[list[str]]:
    return [
        ["--target", gateway.http_url],
        ["--target", gateway.http_url, "--protocol", "v2"],
        ["--target", f"grpc://{gateway.grpc_target}"],
    ]


def _pixels(tmp_path: Path, seed: int = 0) -> str:
    """A .npy file of one image's pixels, [28, 28, 1] uint8."""
    path = tmp_path / f"pixels-{seed}.npy"
    np.save(path, sample_images(1, seed=seed)[0])
    return str(path)


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, str]]:
    """The exit code and the JSON error the CLI printed (empty on success)."""
    code = main([*args, "--json"])
    err = capsys.readouterr().err.strip()
    return code, (json.loads(err) if err else {})


def test_invalid_input_exits_3(
    tiny_repo: Path, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = start_gateway(tiny_repo, max_request_batch=1)
    two_images = [_pixels(tmp_path, 1), _pixels(tmp_path, 2)]  # one request of two rows
    for target in _targets(gateway):
        code, error = _run(capsys, "predict", *target, "--model", MODEL, *two_images)
        assert code == 3, (target, error)
        assert error["status"] == "INVALID_ARGUMENT" and "limit is 1" in error["error"], error
    assert "InvalidInput" in EXIT_CODES[3]


def test_unauthenticated_exits_8(
    tiny_repo: Path, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = start_gateway(tiny_repo, api_keys=["k-one"])
    image = _pixels(tmp_path)
    for target in _targets(gateway):
        for key in ([], ["--api-key", "wrong"]):
            code, error = _run(capsys, "predict", *target, *key, "--model", MODEL, image)
            assert code == 8, (target, key, error)
            assert error["status"] == "UNAUTHENTICATED", error
        code, _ = _run(capsys, "predict", *target, "--api-key", "k-one", "--model", MODEL, image)
        assert code == 0, target
    assert "Unauthenticated" in EXIT_CODES[8]


def test_server_busy_exits_5(
    slow_repo: Path, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # One batch computing and one queued fill a queue of one with no overflow: refused at once.
    gateway = start_gateway(slow_repo, batching=False, max_queue_size=1, queue_overflow=0)
    image = _pixels(tmp_path)
    with model_busy(gateway, SLOW, requests=2, rows=32):
        for target in _targets(gateway):
            code, error = _run(capsys, "predict", *target, "--retries", "1", "--model", SLOW, image)
            assert code == 5, (target, error)
            assert error["status"] == "RESOURCE_EXHAUSTED" and "queue is full" in error["error"]
    assert "ServerBusy" in EXIT_CODES[5]


def test_deadline_exceeded_exits_6(
    slow_repo: Path, start_gateway: StartGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = start_gateway(slow_repo, batching=False)
    image = _pixels(tmp_path)
    with model_busy(gateway, SLOW, requests=2, rows=32):
        for target in _targets(gateway):
            code, error = _run(
                capsys, "predict", *target, "--timeout", "0.3", "--model", SLOW, image
            )
            assert code == 6, (target, error)
            assert error["status"] == "DEADLINE_EXCEEDED", error
    assert "DeadlineExceeded" in EXIT_CODES[6]
