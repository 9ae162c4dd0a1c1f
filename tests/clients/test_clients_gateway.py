"""The client against the real gateway (serving/) on 127.0.0.1: TF Serving REST, V2 and gRPC.

The gateway runs in-process on its own event loop thread, over a tiny ONNX repository (two
versions, labels stable=1 and canary=2). Results are compared with ONNX Runtime run directly.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

from clients import (
    AsyncClient,
    Client,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    Status,
)
from clients.cli import main as cli_main
from serving.gateway import Gateway
from serving.settings import ServingSettings
from tests.tiny_models import (
    reference_predict,
    sample_images,
    write_labelled_pair,
)

MODEL = "tiny"
TRANSPORTS = ["rest", "rest-row", "v2", "grpc"]


class GatewayThread:
    """``serving.gateway.Gateway`` on its own loop in a daemon thread, ports chosen by the OS."""

    def __init__(self, repository: Path) -> None:
        self.settings = ServingSettings(
            repository=repository,
            host="127.0.0.1",
            http_port=0,
            grpc_port=0,
            device="cpu",
            poll_interval_s=0,
            log_level="warning",
        )
        self.loop = asyncio.new_event_loop()
        self.gateway: Gateway | None = None
        self.thread = threading.Thread(target=self._run, name="client-test-gateway", daemon=True)
        self.ready = threading.Event()
        self.failure: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.gateway = Gateway(self.settings)
        try:
            self.loop.run_until_complete(self.gateway.start())
        except BaseException as error:  # surfaced in start()
            self.failure = error
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> GatewayThread:
        self.thread.start()
        self.ready.wait(60)
        if self.failure is not None:
            raise self.failure
        return self

    def stop(self) -> None:
        if self.gateway is not None and self.failure is None:
            asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(30)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)

    def target(self, transport: str) -> tuple[str, dict[str, Any]]:
        assert self.gateway is not None
        if transport == "grpc":
            return f"grpc://127.0.0.1:{self.gateway.grpc_port}", {}
        url = f"http://127.0.0.1:{self.gateway.http_port}"
        if transport == "v2":
            return url, {"protocol": "v2"}
        if transport == "rest-row":
            return url, {"rest_format": "row"}
        return url, {}


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labelled_pair(tmp_path_factory.mktemp("client-repo"), MODEL)


@pytest.fixture(scope="module")
def gateway(repository: Path) -> Iterator[GatewayThread]:
    running = GatewayThread(repository).start()
    yield running
    running.stop()


def reference(repository: Path, version: int, images: np.ndarray) -> np.ndarray:
    return reference_predict(repository / MODEL / str(version) / "model.onnx", images)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_predict_matches_onnx_runtime_over_every_transport(
    gateway: GatewayThread, repository: Path, transport: str
) -> None:
    images = sample_images(5, seed=3)
    target, kwargs = gateway.target(transport)
    with Client(target, **kwargs) as client:
        latest = client.predict(MODEL, {"image": images})
        first = client.predict(MODEL, images, version=1)
        expected_latest = reference(repository, 2, images)
        np.testing.assert_allclose(
            np.asarray(latest, dtype=np.float32), expected_latest, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            np.asarray(first, dtype=np.float32),
            reference(repository, 1, images),
            rtol=1e-5,
            atol=1e-7,
        )
        if transport != "v2":  # KServe V2 has no labels
            stable = client.predict(MODEL, images, label="stable")
            np.testing.assert_allclose(
                np.asarray(stable, dtype=np.float32),
                reference(repository, 1, images),
                rtol=1e-5,
                atol=1e-7,
            )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_status_health_and_classify_over_every_transport(
    gateway: GatewayThread, repository: Path, transport: str
) -> None:
    target, kwargs = gateway.target(transport)
    with Client(target, **kwargs) as client:
        signature = client.metadata(MODEL, version=1).signature()
        assert signature.inputs["image"].dtype == "uint8"
        assert signature.inputs["image"].shape == (-1, 28, 28, 1)
        assert signature.outputs["probabilities"].dtype == "float32"
        assert any(state.available for state in client.status(MODEL))
        assert client.live() and client.ready() and client.ready(MODEL)
        assert not client.ready("missing")
        images = sample_images(2, seed=5)
        names = [f"digit-{i}" for i in range(10)]
        top = client.classify(MODEL, list(images), top_k=3, version=1, class_names=names)
        # Without names the client labels answers from the gateway's metadata (metadata.json).
        assert client.metadata(MODEL, version=1).class_names == [f"class_{i}" for i in range(10)]
        from_metadata = client.classify(MODEL, list(images), top_k=1, version=1)
    expected = reference(repository, 1, images)
    for row, labelled, probabilities in zip(top, from_metadata, expected, strict=True):
        assert len(row) == 3
        assert row[0] == (
            f"digit-{int(probabilities.argmax())}",
            pytest.approx(float(probabilities.max()), rel=1e-5),
        )
        assert labelled[0][0] == f"class_{int(probabilities.argmax())}"


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_gateway_errors_map_to_one_exception_and_status(
    gateway: GatewayThread, transport: str
) -> None:
    target, kwargs = gateway.target(transport)
    images = sample_images(1, seed=1)
    with Client(target, retry=RetryPolicy(attempts=1), **kwargs) as client:
        with pytest.raises(ModelNotFound) as missing_model:
            client.predict("missing", {"image": images})
        with pytest.raises(ModelNotFound) as missing_version:
            client.predict(MODEL, {"image": images}, version=9)
        with pytest.raises(InvalidInput) as wrong_name:
            client.predict(MODEL, {"pixels": images})
        with pytest.raises(InvalidInput) as wrong_shape:
            client.predict(MODEL, {"image": np.zeros((1, 5, 5, 1), np.uint8)})
    assert missing_model.value.status is missing_version.value.status is Status.NOT_FOUND
    assert wrong_name.value.status is wrong_shape.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_client_against_the_gateway(
    gateway: GatewayThread, repository: Path, transport: str
) -> None:
    target, kwargs = gateway.target(transport)
    batches = [sample_images(2, seed=seed) for seed in range(4)]

    async def scenario() -> list[Any]:
        async with AsyncClient(target, **kwargs) as client:
            return await asyncio.gather(*(client.predict(MODEL, b, version=1) for b in batches))

    for batch, result in zip(batches, asyncio.run(scenario()), strict=True):
        np.testing.assert_allclose(
            np.asarray(result, dtype=np.float32),
            reference(repository, 1, batch),
            rtol=1e-5,
            atol=1e-7,
        )


def test_cli_against_the_gateway(
    gateway: GatewayThread, repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    image = sample_images(1, seed=8)[0]
    path = tmp_path / "digit.png"
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0]).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    expected = reference(repository, 1, image[None])[0]
    for transport in ("rest", "grpc", "v2"):
        target, kwargs = gateway.target(transport)
        protocol = ["--protocol", "v2"] if kwargs.get("protocol") == "v2" else []
        args = [
            "predict",
            "--target",
            target,
            "--model",
            MODEL,
            "--version",
            "1",
            "--json",
            *protocol,
        ]
        assert cli_main([*args, str(path)]) == 0
        (result,) = json.loads(capsys.readouterr().out)
        # Labelled from the gateway's metadata (the tiny repository names them class_<i>).
        assert result["top_k"][0]["label"] == f"class_{int(expected.argmax())}"
    target, _ = gateway.target("rest")
    assert cli_main(["status", "--target", target, "--model", "missing"]) == 4
    capsys.readouterr()
