"""``Client`` and ``AsyncClient``: one surface for TF Serving and the gateway, HTTP or gRPC.

Public API:

- ``Client(target, *, protocol=None, timeout=10.0, retry=RetryPolicy(), api_key=None,
  bearer_token=None, api_key_header="x-api-key", ca_cert=None, transport=None,
  rest_format="columnar", class_names=None)``: ``target`` is ``http://host:port``,
  ``https://...``, ``grpc://host:port`` or ``grpcs://host:port``; ``protocol`` is ``"rest"`` (TF
  Serving REST, the HTTP default), ``"v2"`` (KServe V2 with binary tensors), ``"grpc"`` (TF
  Serving gRPC, implied by the scheme) or ``"v2-grpc"`` (KServe V2 over gRPC, raw tensors; a
  ``grpc://`` target).
- ``AsyncClient``: the same, every call awaitable; ``transport`` is an ``httpx.AsyncBaseTransport``
  (e.g. ``httpx.ASGITransport(app)`` for an in-process server).
- Methods: ``predict(model, inputs, *, version=None, label=None, signature="serving_default",
  outputs=None, timeout=None)`` -> ndarray (one output) or ``{name: ndarray}``;
  ``classify(model, images, top_k=5, ...)`` -> one ``[(label, score), ...]`` list per image;
  ``status(model, ...)`` -> ``[ModelVersionState]``; ``metadata(model, ...)`` -> ``ModelMetadata``;
  ``live()`` / ``ready(model=None)`` -> bool; ``close()``; context manager.
- ``RetryPolicy(attempts=3, backoff_s=0.05, multiplier=2.0, max_backoff_s=2.0,
  retry_on=frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED}))``.

Every failure raises a ``clients.errors.ServingError`` subclass with the same ``Status`` whatever
the transport: connection failures are ``Unavailable``, timeouts ``DeadlineExceeded``.

Size: ``Client`` and ``AsyncClient`` side by side on purpose: every method exists in both, and
a change to one should be made in view of the other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import grpc
import grpc.aio
import httpx
import numpy as np

from clients import images as image_prep
from clients.errors import (
    DeadlineExceeded,
    InvalidInput,
    ServingError,
    Status,
    Unavailable,
    error_for_grpc,
    error_for_http,
)
from clients.protocols import (
    GrpcCall,
    GrpcProtocol,
    HttpCall,
    HttpReply,
    ModelMetadata,
    ModelVersionState,
    Outputs,
    RestProtocol,
    SignatureInfo,
    TensorSpec,
    V2GrpcProtocol,
    V2Protocol,
    single_output,
)
from clients.wire import DEFAULT_SIGNATURE

__all__ = [
    "AsyncClient",
    "Client",
    "ModelMetadata",
    "ModelVersionState",
    "RetryPolicy",
    "SignatureInfo",
    "TensorSpec",
]

T = TypeVar("T")
USER_AGENT = "convnet-serving-client/0.1"
# Allow big batches and outputs; gRPC's 4 MiB default is smaller than a [64, 224, 224, 3] batch.
_GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
]


@dataclass(frozen=True)
class RetryPolicy:
    """Retries with exponential backoff for statuses that say "try again later"."""

    attempts: int = 3
    backoff_s: float = 0.05
    multiplier: float = 2.0
    max_backoff_s: float = 2.0
    retry_on: frozenset[Status] = field(
        default_factory=lambda: frozenset({Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED})
    )

    def delay(
        self, error: ServingError, attempt: int, retry_after_s: float | None = None
    ) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up and raise."""
        if error.status not in self.retry_on or attempt + 1 >= self.attempts:
            return None
        wait = self.backoff_s * self.multiplier**attempt
        if retry_after_s is not None:
            wait = max(wait, retry_after_s)  # the server knows its own queue best
        return min(wait, self.max_backoff_s)


NO_RETRY = RetryPolicy(attempts=1)
# Statuses that mean "nobody answered" rather than "the server answered with an error".
_DOWN = frozenset({Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED})


@dataclass(frozen=True)
class _Target:
    scheme: str
    netloc: str
    base_path: str

    @property
    def is_grpc(self) -> bool:
        return self.scheme in ("grpc", "grpcs")

    @property
    def tls(self) -> bool:
        return self.scheme in ("https", "grpcs")


def _parse_target(target: str) -> _Target:
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https", "grpc", "grpcs") or not parts.netloc:
        raise ValueError(
            f"target {target!r} must look like http://host:port, https://..., grpc://host:port "
            "or grpcs://host:port"
        )
    return _Target(parts.scheme, parts.netloc, parts.path.rstrip("/"))


def _retry_after(reply: httpx.Response) -> float | None:
    value = reply.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: rare for servers like ours, fall back to backoff


def _serialize(request: Any) -> bytes:
    return request if isinstance(request, bytes) else request.SerializeToString()  # type: ignore[no-any-return]


def _grpc_error(error: grpc.RpcError) -> ServingError:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    number = code.value[0] if isinstance(code, grpc.StatusCode) else Status.UNKNOWN.grpc_code
    return error_for_grpc(number, details)


class _Settings:
    """What both clients hold: target, protocol, auth, timeouts, retries."""

    def __init__(
        self,
        target: str,
        protocol: str | None,
        timeout: float | None,
        retry: RetryPolicy | None,
        api_key: str | None,
        bearer_token: str | None,
        api_key_header: str,
        ca_cert: str | Path | None,
        rest_format: str,
        class_names: Sequence[str] | None,
    ) -> None:
        self.target = _parse_target(target)
        chosen = protocol or ("grpc" if self.target.is_grpc else "rest")
        if self.target.is_grpc != (chosen in ("grpc", "v2-grpc")):
            raise ValueError(
                f"protocol {chosen!r} does not go with a {self.target.scheme}:// target"
            )
        self.protocol: RestProtocol | V2Protocol | GrpcProtocol | V2GrpcProtocol
        if chosen == "rest":
            self.protocol = RestProtocol(rest_format)
        elif chosen == "v2":
            self.protocol = V2Protocol()
        elif chosen == "grpc":
            self.protocol = GrpcProtocol()
        elif chosen == "v2-grpc":
            self.protocol = V2GrpcProtocol()
        else:
            raise ValueError(
                f"protocol must be 'rest', 'v2', 'grpc' or 'v2-grpc', not {protocol!r}"
            )
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.ca_cert = Path(ca_cert) if ca_cert is not None else None
        self.class_names = list(class_names) if class_names is not None else None
        self.auth: dict[str, str] = {}
        if api_key is not None:
            self.auth[api_key_header.lower()] = api_key
        if bearer_token is not None:
            self.auth["authorization"] = f"Bearer {bearer_token}"
        self.metadata_cache: dict[tuple[str, int | None, str | None], ModelMetadata] = {}

    @property
    def base_url(self) -> str:
        return f"{self.target.scheme}://{self.target.netloc}{self.target.base_path}"

    def httpx_verify(self) -> Any:
        if self.ca_cert is None:
            return True
        import ssl

        return ssl.create_default_context(cafile=str(self.ca_cert))

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        root = self.ca_cert.read_bytes() if self.ca_cert is not None else None
        return grpc.ssl_channel_credentials(root_certificates=root)

    def grpc_metadata(self) -> tuple[tuple[str, str], ...]:
        return tuple(self.auth.items())

    def timeout_for(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout

    def check_inputs(self, inputs: Any) -> None:
        if isinstance(inputs, Mapping) and not inputs:
            raise InvalidInput("predict needs at least one input")

    def input_name(self, metadata: ModelMetadata, signature: str | None) -> str:
        sig = metadata.signature(signature or DEFAULT_SIGNATURE)
        if len(sig.inputs) != 1:
            raise InvalidInput(
                f"model {metadata.name!r} has inputs {sorted(sig.inputs)}: pass a dict of arrays"
            )
        return next(iter(sig.inputs))

    def classify_plan(
        self, metadata: ModelMetadata, signature: str | None, images: Sequence[Any]
    ) -> tuple[str, Any, str | None]:
        sig = metadata.signature(signature or DEFAULT_SIGNATURE)
        if len(sig.inputs) != 1:
            raise InvalidInput(
                f"classify needs a one-input model, {metadata.name!r} has {sorted(sig.inputs)}"
            )
        spec = next(iter(sig.inputs.values()))
        output = "probabilities" if "probabilities" in sig.outputs else None
        if output is None and len(sig.outputs) == 1:
            output = next(iter(sig.outputs))
        declared = metadata.preprocessing
        if declared is not None and spec.dtype != np.dtype(np.uint8):
            # A float input whose metadata says how pixels become it: decode and resize as for
            # any model, then scale, normalise, lay out and cast as declared.
            mismatch = declared.matches(spec.name, spec.dtype, tuple(spec.shape))
            if mismatch:
                raise InvalidInput(f"model {metadata.name!r}: {mismatch}")
            pixels_spec = TensorSpec(
                spec.name,
                np.dtype(np.uint8),
                (-1, declared.height, declared.width, declared.channels),
            )
            pixels = image_prep.prepare_batch(list(images), pixels_spec)
            return spec.name, declared.apply(pixels), output
        check_takes_pixels(metadata.name, spec)
        return spec.name, image_prep.prepare_batch(list(images), spec), output

    def top_k(
        self,
        outputs: Outputs,
        output: str | None,
        k: int,
        metadata: ModelMetadata,
        names: Sequence[str] | None,
    ) -> list[list[tuple[str, float]]]:
        if isinstance(outputs, dict):
            if output is None or output not in outputs:
                raise InvalidInput(f"cannot tell which of {sorted(outputs)} holds probabilities")
            probabilities = outputs[output]
        else:
            probabilities = outputs
        labels = names if names is not None else self.class_names or metadata.class_names
        return image_prep.top_k(probabilities, k, labels)


def check_takes_pixels(model: str, spec: Any) -> None:
    """InvalidInput unless the input takes raw uint8 pixels: classify sends 0-255 pixels, and a
    model with a float input expects them scaled somehow (0-1, mean/std) that nothing here says,
    so it would answer a confident wrong class (unless its metadata declares how: see
    ``classify_plan``)."""
    if spec.dtype == np.dtype(np.uint8) or spec.dtype == np.dtype(object):
        return
    shape = ", ".join(str(d) for d in spec.shape)
    raise InvalidInput(
        f"model {model!r} takes {spec.dtype} input {spec.name!r} [{shape}], not uint8 images: "
        "classify would send raw 0-255 pixels with no scaling; export the model with "
        "`python -m training export --from ...` (its preprocessing inside the model), or "
        "preprocess the images yourself and call predict()"
    )


class Client:
    """Blocking client; one httpx connection pool or one gRPC channel, reused for every call."""

    def __init__(
        self,
        target: str,
        *,
        protocol: str | None = None,
        timeout: float | None = 10.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        bearer_token: str | None = None,
        api_key_header: str = "x-api-key",
        ca_cert: str | Path | None = None,
        transport: httpx.BaseTransport | None = None,
        rest_format: str = "columnar",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self._settings = _Settings(
            target, protocol, timeout, retry, api_key, bearer_token, api_key_header, ca_cert,
            rest_format, class_names,
        )  # fmt: skip
        self._http: httpx.Client | None = None
        self._channel: grpc.Channel | None = None
        if self._settings.target.is_grpc:
            address = self._settings.target.netloc
            self._channel = (
                grpc.secure_channel(address, self._settings.grpc_credentials(), _GRPC_OPTIONS)
                if self._settings.target.tls
                else grpc.insecure_channel(address, _GRPC_OPTIONS)
            )
        else:
            self._http = httpx.Client(
                base_url=self._settings.base_url,
                transport=transport,
                verify=self._settings.httpx_verify(),
                headers={"user-agent": USER_AGENT, **self._settings.auth},
                timeout=timeout,
            )
        self._callables: dict[str, Any] = {}

    # --- plumbing ---

    def _run(self, call: HttpCall[T] | GrpcCall[T], timeout: float | None, retry: bool = True) -> T:
        policy = self._settings.retry if retry else NO_RETRY
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                if isinstance(call, GrpcCall):
                    return call.parse(self._grpc_once(call, timeout))
                reply = self._http_once(call, timeout)
                if reply.status_code >= 400 and call.raise_for_status:
                    retry_after = _retry_after(reply)
                    raise error_for_http(reply.status_code, reply.text)
                return call.parse(HttpReply(reply.status_code, reply.headers, reply.content))
            except ServingError as error:
                delay = policy.delay(error, attempt, retry_after)
                if delay is None:
                    raise
                time.sleep(delay)
                attempt += 1

    def _http_once(self, call: HttpCall[Any], timeout: float | None) -> httpx.Response:
        assert self._http is not None
        try:
            return self._http.request(
                call.method,
                call.path,
                content=call.body,
                headers=call.headers,
                timeout=self._settings.timeout_for(timeout),
            )
        except httpx.TimeoutException as error:
            raise DeadlineExceeded(f"{call.method} {call.path}: {error!r}") from error
        except httpx.TransportError as error:
            raise Unavailable(f"{self._settings.base_url}: {error!r}") from error

    def _grpc_once(self, call: GrpcCall[Any], timeout: float | None) -> Any:
        assert self._channel is not None
        method = self._callables.get(call.method)
        if method is None:
            method = self._channel.unary_unary(
                call.method,
                request_serializer=_serialize,
                response_deserializer=call.response_type.FromString,
            )
            self._callables[call.method] = method
        try:
            return method(
                call.request,
                timeout=self._settings.timeout_for(timeout),
                metadata=self._settings.grpc_metadata(),
            )
        except grpc.RpcError as error:
            raise _grpc_error(error) from None

    # --- public surface ---

    def predict(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = DEFAULT_SIGNATURE,
        outputs: list[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run the model: ``inputs`` is an array (one-input models) or ``{name: array}``.

        Returns an ndarray for a single output, else ``{name: ndarray}``. Over TF Serving REST the
        JSON carries no dtype: floats come back as float64 and integers as int64.
        """
        self._settings.check_inputs(inputs)
        if not isinstance(inputs, Mapping) and self._settings.protocol.needs_input_names:
            metadata = self.metadata(model, version=version, label=label)
            inputs = {self._settings.input_name(metadata, signature): inputs}
        call = self._settings.protocol.predict(model, inputs, version, label, signature, outputs)
        return single_output(self._run(call, timeout))

    def classify(
        self,
        model: str,
        images: Sequence[Any],
        top_k: int = 5,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = DEFAULT_SIGNATURE,
        class_names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k ``(label, score)`` per image; images are paths, bytes, PIL images or arrays."""
        metadata = self.metadata(model, version=version, label=label)
        name, batch, output = self._settings.classify_plan(metadata, signature, images)
        outputs = self._settings.protocol.predict(
            model, {name: batch}, version, label, signature, None
        )
        result = self._run(outputs, timeout)
        return self._settings.top_k(result, output, top_k, metadata, class_names)

    def metadata(
        self,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        refresh: bool = False,
    ) -> ModelMetadata:
        """The model's signatures (cached per model/version/label; ``refresh`` re-asks)."""
        key = (model, version, label)
        cached = self._settings.metadata_cache.get(key)
        if cached is None or refresh:
            cached = self._run(self._settings.protocol.metadata(model, version, label), timeout)
            self._settings.metadata_cache[key] = cached
        return cached

    def status(
        self,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> list[ModelVersionState]:
        """Each version's state (``AVAILABLE``, ``LOADING``, ...)."""
        return self._run(self._settings.protocol.status(model, version, label), timeout)

    def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server answers at all, even with an error (no retries)."""
        try:
            return self._run(self._settings.protocol.live(), timeout, retry=False)
        except ServingError as error:
            return error.status not in _DOWN

    def ready(self, model: str | None = None, *, timeout: float | None = None) -> bool:
        """Whether ``model`` has an available version; without a model, the server is ready
        (KServe V2's ``/v2/health/ready``; TF Serving has no such call, so there: ``live()``)."""
        try:
            if model is None:
                call = self._settings.protocol.ready()
                return self._run(call, timeout, retry=False) if call else self.live(timeout=timeout)
            states = self._run(self._settings.protocol.status(model, None, None), timeout, False)
            return any(state.available for state in states)
        except ServingError:
            return False

    def close(self) -> None:
        """Release the connection pool or channel."""
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class AsyncClient:
    """asyncio client with the same surface as ``Client``; every call is awaitable."""

    def __init__(
        self,
        target: str,
        *,
        protocol: str | None = None,
        timeout: float | None = 10.0,
        retry: RetryPolicy | None = None,
        api_key: str | None = None,
        bearer_token: str | None = None,
        api_key_header: str = "x-api-key",
        ca_cert: str | Path | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rest_format: str = "columnar",
        class_names: Sequence[str] | None = None,
    ) -> None:
        self._settings = _Settings(
            target, protocol, timeout, retry, api_key, bearer_token, api_key_header, ca_cert,
            rest_format, class_names,
        )  # fmt: skip
        self._http: httpx.AsyncClient | None = None
        self._channel: grpc.aio.Channel | None = None
        self._callables: dict[str, Any] = {}
        if not self._settings.target.is_grpc:
            self._http = httpx.AsyncClient(
                base_url=self._settings.base_url,
                transport=transport,
                verify=self._settings.httpx_verify(),
                headers={"user-agent": USER_AGENT, **self._settings.auth},
                timeout=timeout,
            )

    def _grpc_channel(self) -> grpc.aio.Channel:
        # grpc.aio channels bind to the running loop, so the channel is made on first use.
        if self._channel is None:
            address = self._settings.target.netloc
            self._channel = (
                grpc.aio.secure_channel(address, self._settings.grpc_credentials(), _GRPC_OPTIONS)
                if self._settings.target.tls
                else grpc.aio.insecure_channel(address, _GRPC_OPTIONS)
            )
        return self._channel

    async def _run(
        self, call: HttpCall[T] | GrpcCall[T], timeout: float | None, retry: bool = True
    ) -> T:
        policy = self._settings.retry if retry else NO_RETRY
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                if isinstance(call, GrpcCall):
                    return call.parse(await self._grpc_once(call, timeout))
                reply = await self._http_once(call, timeout)
                if reply.status_code >= 400 and call.raise_for_status:
                    retry_after = _retry_after(reply)
                    raise error_for_http(reply.status_code, reply.text)
                return call.parse(HttpReply(reply.status_code, reply.headers, reply.content))
            except ServingError as error:
                delay = policy.delay(error, attempt, retry_after)
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def _http_once(self, call: HttpCall[Any], timeout: float | None) -> httpx.Response:
        assert self._http is not None
        try:
            return await self._http.request(
                call.method,
                call.path,
                content=call.body,
                headers=call.headers,
                timeout=self._settings.timeout_for(timeout),
            )
        except httpx.TimeoutException as error:
            raise DeadlineExceeded(f"{call.method} {call.path}: {error!r}") from error
        except httpx.TransportError as error:
            raise Unavailable(f"{self._settings.base_url}: {error!r}") from error

    async def _grpc_once(self, call: GrpcCall[Any], timeout: float | None) -> Any:
        method = self._callables.get(call.method)
        if method is None:
            method = self._grpc_channel().unary_unary(
                call.method,
                request_serializer=_serialize,
                response_deserializer=call.response_type.FromString,
            )
            self._callables[call.method] = method
        try:
            return await method(
                call.request,
                timeout=self._settings.timeout_for(timeout),
                metadata=self._settings.grpc_metadata(),
            )
        except grpc.RpcError as error:
            raise _grpc_error(error) from None

    async def predict(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = DEFAULT_SIGNATURE,
        outputs: list[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run the model: ``inputs`` is an array (one-input models) or ``{name: array}``.

        Returns an ndarray for a single output, else ``{name: ndarray}``. Over TF Serving REST the
        JSON carries no dtype: floats come back as float64 and integers as int64.
        """
        self._settings.check_inputs(inputs)
        if not isinstance(inputs, Mapping) and self._settings.protocol.needs_input_names:
            metadata = await self.metadata(model, version=version, label=label)
            inputs = {self._settings.input_name(metadata, signature): inputs}
        call = self._settings.protocol.predict(model, inputs, version, label, signature, outputs)
        return single_output(await self._run(call, timeout))

    async def classify(
        self,
        model: str,
        images: Sequence[Any],
        top_k: int = 5,
        *,
        version: int | None = None,
        label: str | None = None,
        signature: str | None = DEFAULT_SIGNATURE,
        class_names: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k ``(label, score)`` per image; images are paths, bytes, PIL images or arrays."""
        metadata = await self.metadata(model, version=version, label=label)
        name, batch, output = self._settings.classify_plan(metadata, signature, images)
        call = self._settings.protocol.predict(
            model, {name: batch}, version, label, signature, None
        )
        result = await self._run(call, timeout)
        return self._settings.top_k(result, output, top_k, metadata, class_names)

    async def metadata(
        self,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
        refresh: bool = False,
    ) -> ModelMetadata:
        """The model's signatures (cached per model/version/label; ``refresh`` re-asks)."""
        key = (model, version, label)
        cached = self._settings.metadata_cache.get(key)
        if cached is None or refresh:
            call = self._settings.protocol.metadata(model, version, label)
            cached = await self._run(call, timeout)
            self._settings.metadata_cache[key] = cached
        return cached

    async def status(
        self,
        model: str,
        *,
        version: int | None = None,
        label: str | None = None,
        timeout: float | None = None,
    ) -> list[ModelVersionState]:
        """Each version's state (``AVAILABLE``, ``LOADING``, ...)."""
        return await self._run(self._settings.protocol.status(model, version, label), timeout)

    async def live(self, *, timeout: float | None = None) -> bool:
        """Whether the server answers at all, even with an error (no retries)."""
        try:
            return await self._run(self._settings.protocol.live(), timeout, retry=False)
        except ServingError as error:
            return error.status not in _DOWN

    async def ready(self, model: str | None = None, *, timeout: float | None = None) -> bool:
        """Whether ``model`` has an available version; without a model, the server is ready
        (KServe V2's ``/v2/health/ready``; TF Serving has no such call, so there: ``live()``)."""
        try:
            if model is None:
                call = self._settings.protocol.ready()
                if call is None:
                    return await self.live(timeout=timeout)
                return await self._run(call, timeout, retry=False)
            call_status = self._settings.protocol.status(model, None, None)
            states = await self._run(call_status, timeout, retry=False)
            return any(state.available for state in states)
        except ServingError:
            return False

    async def close(self) -> None:
        """Release the connection pool or channel."""
        if self._http is not None:
            await self._http.aclose()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()
