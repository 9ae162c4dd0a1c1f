"""Client and AsyncClient against real loopback servers, over TF Serving REST, KServe V2 and gRPC."""

from __future__ import annotations

import asyncio
import io

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
    Unavailable,
)
from clients.errors import ServingError
from tests.clients.clients_loopback import (
    CLASS_NAMES,
    MODEL,
    TRANSPORTS,
    LoopbackServers,
    make_client_kwargs,
    toy_model,
)

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)
BATCH = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_predict_returns_the_model_output_over_every_transport(
    servers: LoopbackServers, transport: str
) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, **kwargs) as client:
        named = client.predict(MODEL, {"image": BATCH})
        bare = client.predict(MODEL, BATCH)
    for result in (named, bare):
        assert isinstance(result, np.ndarray)
        np.testing.assert_allclose(result, toy_model(BATCH), rtol=1e-6)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_metadata_status_and_health_over_every_transport(
    servers: LoopbackServers, transport: str
) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, **kwargs) as client:
        metadata = client.metadata(MODEL)
        signature = metadata.signature()
        assert signature.inputs["image"].dtype == "uint8"
        assert signature.inputs["image"].shape == (-1, 2, 2, 1)
        assert signature.outputs["probabilities"].dtype == "float32"
        assert metadata.version == 1
        states = client.status(MODEL)
        assert [state.available for state in states] == [True]
        assert client.live() is True
        assert client.ready() is True
        assert client.ready(MODEL) is True
        assert client.ready("missing") is False


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_version_and_label_select_the_model_version(
    servers: LoopbackServers, transport: str
) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, **kwargs) as client:
        assert client.status(MODEL, label="stable")[0].version == 1
        result = client.predict(MODEL, {"image": BATCH}, version=1)
        np.testing.assert_allclose(result, toy_model(BATCH), rtol=1e-6)
        with pytest.raises(ModelNotFound):
            client.predict(MODEL, {"image": BATCH}, version=7)
        with pytest.raises(ModelNotFound):
            client.status(MODEL, label="canary")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_classify_reads_preprocessing_from_metadata(
    servers: LoopbackServers, transport: str
) -> None:
    from PIL import Image

    # A 4x4 RGB picture: classify must convert it to grey and resize it to the model's 2x2.
    picture = Image.fromarray(np.full((4, 4, 3), 1, dtype=np.uint8))
    encoded = io.BytesIO()
    picture.save(encoded, format="PNG")
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, class_names=None if transport == "v2" else CLASS_NAMES, **kwargs) as client:
        results = client.classify(MODEL, [encoded.getvalue(), picture, BATCH[2]], top_k=2)
    # grey 1 everywhere: sum 4 -> class 1; BATCH[2] = 8..11, sum 38 -> class 2.
    assert [r[0][0] for r in results] == ["one", "one", "two"]
    assert len(results[0]) == 2
    assert results[0][0][1] == pytest.approx(0.8)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("status", "exception"),
    [
        (Status.NOT_FOUND, ModelNotFound),
        (Status.INVALID_ARGUMENT, InvalidInput),
        (Status.RESOURCE_EXHAUSTED, ServerBusy),
        (Status.UNAVAILABLE, Unavailable),
        (Status.DEADLINE_EXCEEDED, DeadlineExceeded),
    ],
)
def test_errors_map_to_one_exception_and_status_over_every_transport(
    servers: LoopbackServers, transport: str, status: Status, exception: type[ServingError]
) -> None:
    servers.behaviour.failures.extend([status] * 5)
    target, kwargs = make_client_kwargs(servers, transport)
    client = Client(target, retry=RetryPolicy(attempts=1), **kwargs)
    with client, pytest.raises(exception) as raised:
        client.predict(MODEL, {"image": BATCH})
    assert raised.value.status is status
    assert "injected" in raised.value.message


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_real_request_errors_map_the_same_over_every_transport(
    servers: LoopbackServers, transport: str
) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, **kwargs) as client:
        with pytest.raises(ModelNotFound) as missing:
            client.predict("missing", {"image": BATCH})
        with pytest.raises(InvalidInput) as wrong_dtype:
            client.predict(MODEL, {"image": BATCH.astype(np.float32)})
    assert missing.value.status is Status.NOT_FOUND
    assert wrong_dtype.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("status", [Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED])
def test_retries_until_the_server_recovers(
    servers: LoopbackServers, transport: str, status: Status
) -> None:
    servers.behaviour.failures.extend([status, status])
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, retry=FAST_RETRY, **kwargs) as client:
        result = client.predict(MODEL, {"image": BATCH})
    np.testing.assert_allclose(result, toy_model(BATCH), rtol=1e-6)
    assert servers.behaviour.predict_calls == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_retries_stop_after_the_configured_attempts(
    servers: LoopbackServers, transport: str
) -> None:
    servers.behaviour.failures.extend([Status.UNAVAILABLE] * 5)
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, retry=FAST_RETRY, **kwargs) as client, pytest.raises(Unavailable):
        client.predict(MODEL, {"image": BATCH})
    assert servers.behaviour.predict_calls == 3


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_non_retryable_errors_are_not_retried(servers: LoopbackServers, transport: str) -> None:
    servers.behaviour.failures.append(Status.INVALID_ARGUMENT)
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, retry=FAST_RETRY, **kwargs) as client, pytest.raises(InvalidInput):
        client.predict(MODEL, {"image": BATCH})
    assert servers.behaviour.predict_calls == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_client_timeout_raises_deadline_exceeded(servers: LoopbackServers, transport: str) -> None:
    servers.behaviour.delay_s = 0.5
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, **kwargs) as client, pytest.raises(DeadlineExceeded) as raised:
        client.predict(MODEL, {"image": BATCH}, timeout=0.05)
    assert raised.value.status is Status.DEADLINE_EXCEEDED


@pytest.mark.parametrize("target", ["http://127.0.0.1:9", "grpc://127.0.0.1:9"])
def test_unreachable_server_is_unavailable_and_not_live(target: str) -> None:
    with Client(target, retry=RetryPolicy(attempts=1), timeout=2.0) as client:
        assert client.live(timeout=0.2) is False
        with pytest.raises(Unavailable) as raised:
            client.status(MODEL)
    assert raised.value.status is Status.UNAVAILABLE


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_api_key_and_bearer_token_reach_the_server(
    servers: LoopbackServers, transport: str
) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    with Client(target, api_key="k-123", bearer_token="t-456", **kwargs) as client:
        client.predict(MODEL, {"image": BATCH})
    seen = servers.behaviour.headers[-1]
    assert seen["x-api-key"] == "k-123"
    assert seen["authorization"] == "Bearer t-456"


def test_one_connection_is_reused_through_an_injected_transport(servers: LoopbackServers) -> None:
    class CountingTransport(httpx.HTTPTransport):
        """A real transport that counts requests, to show the injected one is used."""

        requests = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            CountingTransport.requests += 1
            return super().handle_request(request)

    transport = CountingTransport()
    with Client(servers.http_url, transport=transport) as client:
        for _ in range(3):
            client.predict(MODEL, {"image": BATCH})
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
def test_async_client_has_the_same_surface(servers: LoopbackServers, transport: str) -> None:
    target, kwargs = make_client_kwargs(servers, transport)
    servers.behaviour.failures.append(Status.UNAVAILABLE)

    async def scenario() -> None:
        async with AsyncClient(target, retry=FAST_RETRY, **kwargs) as client:
            results = await asyncio.gather(
                client.predict(MODEL, {"image": BATCH}), client.predict(MODEL, BATCH)
            )
            for result in results:
                np.testing.assert_allclose(result, toy_model(BATCH), rtol=1e-6)
            assert (await client.metadata(MODEL)).signature().inputs["image"].shape == (-1, 2, 2, 1)
            assert (await client.status(MODEL))[0].available
            assert await client.live()
            assert await client.ready(MODEL)
            top = await client.classify(MODEL, [BATCH[2]], class_names=CLASS_NAMES)
            assert top[0][0][0] == "two"
            with pytest.raises(ModelNotFound) as raised:
                await client.predict("missing", {"image": BATCH})
            assert raised.value.status is Status.NOT_FOUND

    asyncio.run(scenario())
    assert servers.behaviour.predict_calls >= 4  # includes the retried first attempt


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
