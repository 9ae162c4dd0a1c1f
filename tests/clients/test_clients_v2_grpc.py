"""``protocol="v2-grpc"``: the client and the CLI speak KServe V2 over gRPC to the real gateway,
sync and async, with the same answers and the same error statuses as the other protocols."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import numpy as np
import pytest

from clients import AsyncClient, Client
from clients.cli import main
from clients.errors import InvalidInput, ModelNotFound
from tests.clients.gateways import MODEL, reference
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
