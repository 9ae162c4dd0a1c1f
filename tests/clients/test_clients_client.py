"""Client and AsyncClient against the real gateway on 127.0.0.1, over TF Serving REST (column and
row format), KServe V2 and gRPC: answers are compared with ONNX Runtime run directly, and every
error is one the gateway really gives (see ``tests.clients.gateways`` for how each is provoked)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from clients import (
    AsyncClient,
    Client,
    DeadlineExceeded,
    InvalidInput,
    ModelNotFound,
    RetryPolicy,
    ServerBusy,
    Status,
    Unauthenticated,
    Unavailable,
)
from tests.clients.gateways import (
    API_KEY,
    BROKEN,
    HOLDING_ROWS,
    MODEL,
    SLOW,
    TRANSPORTS,
    client_options,
    full_queue,
    reference,
    requests_counted,
)
from tests.serving.serving_harness import RunningGateway, wait_until_idle
from tests.tiny_models import sample_images

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)
#: retries every 50 ms at most, for half a minute or more: outlasts a ``full_queue``.
PATIENT_RETRY = RetryPolicy(attempts=600, backoff_s=0.01, max_backoff_s=0.05)
CLIENT_KINDS = ["Client", "AsyncClient"]


def close(actual: Any, expected: np.ndarray) -> None:
    """The gateway's answer equals ONNX Runtime's, to float32 rounding."""
    np.testing.assert_allclose(np.asarray(actual, np.float32), expected, rtol=1e-5, atol=1e-7)


def predict_once(
    kind: str, target: str, options: dict[str, Any], retry: RetryPolicy, model: str, images: Any
) -> Any:
    """One ``predict`` call through a fresh ``Client`` or ``AsyncClient``."""
    if kind == "Client":
        with Client(target, retry=retry, **options) as client:
            return client.predict(model, {"image": images})

    async def call() -> Any:
        async with AsyncClient(target, retry=retry, **options) as client:
            return await client.predict(model, {"image": images})

    return asyncio.run(call())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_predict_matches_onnx_runtime_over_every_transport(
    gateway: RunningGateway, repository: Path, transport: str
) -> None:
    images = sample_images(5, seed=3)
    target, options = client_options(gateway, transport)
    with Client(target, **options) as client:
        latest = client.predict(MODEL, {"image": images})
        first = client.predict(MODEL, images, version=1)  # input name from the metadata
        close(latest, reference(repository, MODEL, 2, images))
        close(first, reference(repository, MODEL, 1, images))
        if transport != "v2":  # KServe V2 has no labels
            close(
                client.predict(MODEL, images, label="stable"),
                reference(repository, MODEL, 1, images),
            )


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_status_health_and_classify_over_every_transport(
    gateway: RunningGateway, repository: Path, transport: str
) -> None:
    target, options = client_options(gateway, transport)
    with Client(target, **options) as client:
        metadata = client.metadata(MODEL, version=1)
        signature = metadata.signature()
        assert metadata.version == 1
        assert signature.inputs["image"].dtype == "uint8"
        assert signature.inputs["image"].shape == (-1, 28, 28, 1)
        assert signature.outputs["probabilities"].dtype == "float32"
        states = client.status(MODEL)
        # KServe V2 reports the model's readiness, naming no version.
        versions = [None] if transport == "v2" else [1, 2]
        assert sorted(state.version for state in states) == versions  # type: ignore[type-var]
        assert all(state.available for state in states)
        assert client.live() and client.ready() and client.ready(MODEL)
        assert not client.ready("missing")
        images = sample_images(2, seed=5)
        names = [f"digit-{i}" for i in range(10)]
        top = client.classify(MODEL, list(images), top_k=3, version=1, class_names=names)
        # Without names the client labels answers from the gateway's metadata (metadata.json).
        assert metadata.class_names == [f"class_{i}" for i in range(10)]
        from_metadata = client.classify(MODEL, list(images), top_k=1, version=1)
    expected = reference(repository, MODEL, 1, images)
    for row, labelled, probabilities in zip(top, from_metadata, expected, strict=True):
        assert len(row) == 3
        assert row[0] == (
            f"digit-{int(probabilities.argmax())}",
            pytest.approx(float(probabilities.max()), rel=1e-5),
        )
        assert labelled[0][0] == f"class_{int(probabilities.argmax())}"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_version_and_label_select_the_model_version(
    gateway: RunningGateway, repository: Path, transport: str
) -> None:
    images = sample_images(3, seed=4)
    target, options = client_options(gateway, transport)
    with Client(target, **options) as client:
        assert [state.version for state in client.status(MODEL, label="stable")] == [1]
        assert [state.version for state in client.status(MODEL, label="canary")] == [2]
        assert client.metadata(MODEL, label="canary").version == 2
        close(
            client.predict(MODEL, images, label="canary"), reference(repository, MODEL, 2, images)
        )
        with pytest.raises(ModelNotFound):
            client.predict(MODEL, {"image": images}, version=7)
        with pytest.raises(ModelNotFound):
            client.status(MODEL, label="nightly")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_classify_prepares_pictures_as_the_metadata_says(
    gateway: RunningGateway, repository: Path, transport: str
) -> None:
    """Colour pictures of another size become the model's 28x28 grey input; arrays of the right
    size pass as they are. A uniform picture stays uniform through both steps, so the expected
    input needs no image library."""
    from PIL import Image

    grey = 200
    picture = Image.fromarray(np.full((40, 56, 3), grey, dtype=np.uint8))
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    array = sample_images(1, seed=6)[0]
    target, options = client_options(gateway, transport)
    with Client(target, **options) as client:
        results = client.classify(MODEL, [encoded.getvalue(), picture, array], top_k=2, version=1)
    uniform = np.full((28, 28, 1), grey, dtype=np.uint8)
    expected = reference(repository, MODEL, 1, np.stack([uniform, uniform, array]))
    for row, probabilities in zip(results, expected, strict=True):
        best = int(probabilities.argmax())
        assert len(row) == 2
        assert row[0] == (f"class_{best}", pytest.approx(float(probabilities[best]), rel=1e-5))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_request_errors_map_to_one_exception_and_status(
    gateway: RunningGateway, transport: str
) -> None:
    target, options = client_options(gateway, transport)
    images = sample_images(1, seed=1)
    with Client(target, retry=RetryPolicy(attempts=1), **options) as client:
        with pytest.raises(ModelNotFound) as missing_model:
            client.predict("missing", {"image": images})
        with pytest.raises(ModelNotFound) as missing_version:
            client.predict(MODEL, {"image": images}, version=9)
        with pytest.raises(InvalidInput) as wrong_name:
            client.predict(MODEL, {"pixels": images})
        with pytest.raises(InvalidInput) as wrong_shape:
            client.predict(MODEL, {"image": np.zeros((1, 5, 5, 1), np.uint8)})
        with pytest.raises(InvalidInput) as wrong_dtype:
            client.predict(MODEL, {"image": images.astype(np.float32)})
    assert missing_model.value.status is missing_version.value.status is Status.NOT_FOUND
    for invalid in (wrong_name, wrong_shape, wrong_dtype):
        assert invalid.value.status is Status.INVALID_ARGUMENT
    assert "missing" in missing_model.value.message  # the gateway's own words reach the caller
    assert "pixels" in wrong_name.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_full_queue_is_server_busy(busy_gateway: RunningGateway, transport: str) -> None:
    target, options = client_options(busy_gateway, transport)
    refused_before = requests_counted(busy_gateway, transport, "RESOURCE_EXHAUSTED")
    with (
        full_queue(busy_gateway),
        Client(target, retry=RetryPolicy(attempts=1), **options) as client,
        pytest.raises(ServerBusy) as raised,
    ):
        client.predict(SLOW, {"image": sample_images(1)})
    assert raised.value.status is Status.RESOURCE_EXHAUSTED
    assert "queue is full" in raised.value.message
    assert requests_counted(busy_gateway, transport, "RESOURCE_EXHAUSTED") == refused_before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_model_without_a_ready_version_is_unavailable(
    troubled_gateway: RunningGateway, transport: str
) -> None:
    target, options = client_options(troubled_gateway, transport)
    with (
        Client(target, retry=RetryPolicy(attempts=1), **options) as client,
        pytest.raises(Unavailable) as raised,
    ):
        client.predict(BROKEN, {"image": sample_images(1)})
    assert raised.value.status is Status.UNAVAILABLE
    assert "has no version ready" in raised.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_gateways_deadline_is_deadline_exceeded(
    troubled_gateway: RunningGateway, transport: str
) -> None:
    """The client allows 10 s; the gateway gives up after its own 1 ms and says so."""
    target, options = client_options(troubled_gateway, transport)
    with (
        Client(target, retry=RetryPolicy(attempts=1), timeout=10, **options) as client,
        pytest.raises(DeadlineExceeded) as raised,
    ):
        client.predict(SLOW, {"image": sample_images(1)})
    assert raised.value.status is Status.DEADLINE_EXCEEDED
    assert "deadline exceeded" in raised.value.message


@pytest.mark.parametrize(
    ("transport", "kind"),
    # AsyncClient has one HTTP and one gRPC path, whatever the HTTP protocol.
    [(transport, "Client") for transport in TRANSPORTS]
    + [("rest", "AsyncClient"), ("grpc", "AsyncClient")],
)
def test_retries_a_full_queue_until_it_has_room(
    busy_gateway: RunningGateway, slow_repository: Path, transport: str, kind: str
) -> None:
    images = sample_images(1, seed=2)
    target, options = client_options(busy_gateway, transport)
    refused_before = requests_counted(busy_gateway, transport, "RESOURCE_EXHAUSTED")
    with full_queue(busy_gateway):
        result = predict_once(kind, target, options, PATIENT_RETRY, SLOW, images)
    close(result, reference(slow_repository, SLOW, 1, images))
    # Refused while the queue was full, then admitted by a retry.
    assert requests_counted(busy_gateway, transport, "RESOURCE_EXHAUSTED") > refused_before


@pytest.mark.parametrize("kind", CLIENT_KINDS)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retries_stop_after_the_configured_attempts(
    troubled_gateway: RunningGateway, transport: str, kind: str
) -> None:
    target, options = client_options(troubled_gateway, transport)
    before = requests_counted(troubled_gateway, transport, "UNAVAILABLE")
    with pytest.raises(Unavailable):
        predict_once(kind, target, options, FAST_RETRY, BROKEN, sample_images(1))
    assert requests_counted(troubled_gateway, transport, "UNAVAILABLE") == before + 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_retryable_errors_are_not_retried(gateway: RunningGateway, transport: str) -> None:
    target, options = client_options(gateway, transport)
    before = requests_counted(gateway, transport, "INVALID_ARGUMENT")
    with Client(target, retry=FAST_RETRY, **options) as client, pytest.raises(InvalidInput):
        client.predict(MODEL, {"image": np.zeros((1, 5, 5, 1), np.uint8)})
    assert requests_counted(gateway, transport, "INVALID_ARGUMENT") == before + 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_timeout_raises_deadline_exceeded(
    busy_gateway: RunningGateway, transport: str
) -> None:
    """The client's own timeout, well before the slow model answers (the gateway's deadline is
    its default 30 s). The abandoned request may go on computing after the test."""
    wait_until_idle(busy_gateway, SLOW)  # so that this request is not refused by a full queue
    target, options = client_options(busy_gateway, transport)
    with (
        Client(target, **options) as client,
        pytest.raises(DeadlineExceeded) as raised,
    ):
        client.predict(SLOW, {"image": sample_images(HOLDING_ROWS)}, timeout=0.05)
    assert raised.value.status is Status.DEADLINE_EXCEEDED


@pytest.mark.parametrize("target", ["http://127.0.0.1:9", "grpc://127.0.0.1:9"])
def test_unreachable_server_is_unavailable_and_not_live(target: str) -> None:
    with Client(target, retry=RetryPolicy(attempts=1), timeout=2.0) as client:
        assert client.live(timeout=0.2) is False
        with pytest.raises(Unavailable) as raised:
            client.status(MODEL)
    assert raised.value.status is Status.UNAVAILABLE


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_api_key_and_bearer_token_are_accepted_by_the_gateway(
    guarded_gateway: RunningGateway, repository: Path, transport: str
) -> None:
    images = sample_images(2, seed=9)
    expected = reference(repository, MODEL, 2, images)
    target, options = client_options(guarded_gateway, transport)
    for credentials in ({"api_key": API_KEY}, {"bearer_token": API_KEY}):
        with Client(target, **credentials, **options) as client:
            close(client.predict(MODEL, {"image": images}), expected)
    for credentials in ({}, {"api_key": "wrong"}, {"bearer_token": "wrong"}):
        with (
            Client(target, retry=RetryPolicy(attempts=1), **credentials, **options) as client,
            pytest.raises(Unauthenticated) as raised,
        ):
            client.predict(MODEL, {"image": images})
        assert raised.value.status is Status.UNAUTHENTICATED, credentials


def test_one_connection_is_reused_through_an_injected_transport(gateway: RunningGateway) -> None:
    class CountingTransport(httpx.HTTPTransport):
        """A real transport that counts requests, to show the injected one is used."""

        requests = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            CountingTransport.requests += 1
            return super().handle_request(request)

    transport = CountingTransport()
    images = sample_images(1)
    with Client(gateway.http_url, transport=transport) as client:
        for _ in range(3):
            client.predict(MODEL, {"image": images})
        pool = transport._pool
        assert len(pool.connections) == 1  # keep-alive: three requests, one connection
    assert CountingTransport.requests == 3


def test_target_and_protocol_are_checked() -> None:
    with pytest.raises(ValueError, match="target"):
        Client("127.0.0.1:8500")
    with pytest.raises(ValueError, match="protocol"):
        Client("grpc://127.0.0.1:8500", protocol="v2")
    with pytest.raises(InvalidInput):
        Client("http://127.0.0.1:1").predict(MODEL, {})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_async_client_has_the_same_surface(
    gateway: RunningGateway, repository: Path, transport: str
) -> None:
    target, options = client_options(gateway, transport)
    batches = [sample_images(2, seed=seed) for seed in range(4)]

    async def scenario() -> None:
        async with AsyncClient(target, **options) as client:
            results = await asyncio.gather(
                *(client.predict(MODEL, batch, version=1) for batch in batches),
                client.predict(MODEL, {"image": batches[0]}),
            )
            for batch, result in zip(batches, results[:-1], strict=True):
                close(result, reference(repository, MODEL, 1, batch))
            close(results[-1], reference(repository, MODEL, 2, batches[0]))
            metadata = await client.metadata(MODEL)
            assert metadata.signature().inputs["image"].shape == (-1, 28, 28, 1)
            assert all(state.available for state in await client.status(MODEL))
            assert await client.live()
            assert await client.ready(MODEL)
            assert not await client.ready("missing")
            top = await client.classify(MODEL, [batches[0][0]], top_k=1, version=1)
            best = int(reference(repository, MODEL, 1, batches[0][:1])[0].argmax())
            assert top[0][0][0] == f"class_{best}"
            with pytest.raises(ModelNotFound) as raised:
                await client.predict("missing", {"image": batches[0]})
            assert raised.value.status is Status.NOT_FOUND

    asyncio.run(scenario())


def test_retry_policy_backs_off_exponentially_within_bounds() -> None:
    policy = RetryPolicy(attempts=5, backoff_s=0.1, multiplier=2.0, max_backoff_s=0.5)
    busy = ServerBusy("queue full")
    assert [policy.delay(busy, attempt) for attempt in range(5)] == [0.1, 0.2, 0.4, 0.5, None]
    assert policy.delay(busy, 0, retry_after_s=0.3) == 0.3  # the server's Retry-After wins
    assert policy.delay(busy, 0, retry_after_s=9.0) == 0.5  # but never past the cap
    assert policy.delay(InvalidInput("bad"), 0) is None
    assert RetryPolicy(retry_on=frozenset({Status.DEADLINE_EXCEEDED})).delay(
        DeadlineExceeded("slow"), 0
    ) == pytest.approx(0.05)
