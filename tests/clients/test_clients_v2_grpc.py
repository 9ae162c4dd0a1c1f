"""``protocol="v2-grpc"``: the client and the CLI speak KServe V2 over gRPC to the real gateway,
sync and async, with the same answers and the same error statuses as the other protocols."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from clients import AsyncClient, Client, v2_grpc
from clients.cli import main
from clients.errors import InvalidInput, ModelNotFound
from tests.clients.gateways import BROKEN, MODEL, SLOW, full_queue, reference
from tests.serving.serving_harness import RunningGateway
from tests.tiny_models import sample_images


def _target(gateway: RunningGateway) -> str:
    return f"grpc://{gateway.grpc_target}"


def test_predict_metadata_status_and_health_over_v2_grpc(
    gateway: RunningGateway, repository: Path
) -> None:
    images = sample_images(3, seed=361)
    with Client(_target(gateway), protocol="v2-grpc") as client:
        for version in (1, 2):
            got = client.predict(MODEL, {"image": images}, version=version)
            np.testing.assert_allclose(
                got, reference(repository, MODEL, version, images), rtol=1e-5, atol=1e-6
            )
        latest = client.predict(MODEL, {"image": images}, outputs=["probabilities"])
        np.testing.assert_allclose(latest, reference(repository, MODEL, 2, images), rtol=1e-5)
        metadata = client.metadata(MODEL)
        assert metadata.version == 2
        spec = metadata.signature().inputs["image"]
        assert spec.dtype == np.uint8 and spec.shape == (-1, 28, 28, 1)
        assert [s.state for s in client.status(MODEL, version=1)] == ["AVAILABLE"]
        assert [s.state for s in client.status(MODEL, version=9)] == ["UNAVAILABLE"]
        assert client.live() and client.ready() and client.ready(MODEL)
        with pytest.raises(ModelNotFound):
            client.predict("missing", {"image": images})
        with pytest.raises(InvalidInput):
            client.predict(MODEL, {"image": images}, label="stable")


def test_async_client_over_v2_grpc(gateway: RunningGateway, repository: Path) -> None:
    images = sample_images(2, seed=362)

    async def run() -> np.ndarray:
        async with AsyncClient(_target(gateway), protocol="v2-grpc") as client:
            return await client.predict(MODEL, {"image": images}, version=1)  # type: ignore[return-value]

    got = asyncio.run(run())
    np.testing.assert_allclose(got, reference(repository, MODEL, 1, images), rtol=1e-5, atol=1e-6)


def test_v2_grpc_needs_a_grpc_target(gateway: RunningGateway) -> None:
    with pytest.raises(ValueError, match="does not go with a http"):
        Client(gateway.http_url, protocol="v2-grpc")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    encoded = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(encoded, format="PNG")
    return encoded.getvalue()


def test_cli_predict_status_metadata_with_protocol_v2_grpc(
    gateway: RunningGateway,
    repository: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (first,) = sample_images(1, seed=363)
    image = tmp_path / "digit.png"
    image.write_bytes(_png(first))
    best = int(reference(repository, MODEL, 1, first[None])[0].argmax())
    common = ["--target", _target(gateway), "--protocol", "v2-grpc", "--model", MODEL]
    assert main(["predict", *common, "--version", "1", "--json", str(image)]) == 0
    (answer,) = json.loads(capsys.readouterr().out)
    assert answer["top_k"][0]["label"] == str(best)  # V2 metadata carries no class names
    assert main(["status", *common]) == 0
    assert "AVAILABLE" in capsys.readouterr().out
    assert main(["metadata", *common, "--json"]) == 0
    metadata = json.loads(capsys.readouterr().out)
    assert metadata["signatures"]["serving_default"]["inputs"]["image"]["dtype"] == "uint8"
    assert main(["status", *common[:4], "--model", "missing", "--json"]) == 0
    assert "UNAVAILABLE" in capsys.readouterr().out  # ModelReady: not ready, as Triton answers


def _raw_infer(target: str, request: bytes, timeout: float) -> grpc.RpcError | None:
    with grpc.insecure_channel(target) as channel:
        try:
            channel.unary_unary(v2_grpc.MODEL_INFER_METHOD)(request, timeout=timeout)
        except grpc.RpcError as error:
            return error
    return None


def test_v2_grpc_full_queue_is_resource_exhausted_with_retry_pushback(
    busy_gateway: RunningGateway,
) -> None:
    request = v2_grpc.build_infer_request(SLOW, {"image": sample_images(1)}).SerializeToString()
    with full_queue(busy_gateway):
        error = _raw_infer(busy_gateway.grpc_target, request, timeout=30)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    pushback = dict(error.trailing_metadata() or ())  # type: ignore[attr-defined]
    assert int(pushback["grpc-retry-pushback-ms"]) > 0


def test_v2_grpc_deadline_and_unavailable_versions(troubled_gateway: RunningGateway) -> None:
    images = sample_images(1)
    late = v2_grpc.build_infer_request(SLOW, {"image": images}).SerializeToString()
    error = _raw_infer(troubled_gateway.grpc_target, late, timeout=30)
    assert error is not None and error.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    broken = v2_grpc.build_infer_request(BROKEN, {"image": images}).SerializeToString()
    error = _raw_infer(troubled_gateway.grpc_target, broken, timeout=30)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    assert "no version ready" in (error.details() or "")  # type: ignore[attr-defined]
