"""The protocol-free core: resolve model/version/label, validate, batch, run, count.

Transports (REST, gRPC) decode their wire format into numpy arrays, call one method here, and encode
the answer; everything both transports need lives here.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.wire import DEFAULT_SIGNATURE
from serving import images
from serving.batching import InferenceStats
from serving.errors import (
    InvalidArgument,
    NotFound,
    ServingError,
    Unavailable,
    bounded_message,
    shown,
    shown_list,
)
from serving.metrics import GatewayMetrics
from serving.observe import Observer, RequestRecord, current
from serving.offload import DecodePool
from serving.repository import ModelRepository, ModelVersion
from serving.validation import InputLimits, validate_inputs

#: The metrics' model label of requests for a model that is not in the repository: request
#: names never become label values, so bogus names cannot grow the number of series.
UNKNOWN_MODEL = "_unknown"

#: Images up to this many bytes have their header read on the event loop (tens of microseconds),
#: and those declaring at most INLINE_IMAGE_PIXELS are decoded there too (well under a
#: millisecond); every other image is decoded in the bounded pool.
INLINE_IMAGE_BYTES = 64 * 1024
INLINE_IMAGE_PIXELS = 128 * 128


class Accounting:
    """:meth:`DataPlane.observe`'s context manager. A class rather than a generator under
    ``contextlib.contextmanager``: every request enters one, and the generator's machinery (a
    generator, a StopIteration on exit) cost several times this (benchmarks/RESULTS.md)."""

    __slots__ = ("dataplane", "model", "protocol", "record", "start")

    def __init__(self, dataplane: DataPlane, protocol: str, model: str) -> None:
        self.dataplane, self.protocol, self.model = dataplane, protocol, model

    def __enter__(self) -> RequestRecord:
        record = current.get()
        if record is None:  # a caller outside a transport (tests, tools)
            record = RequestRecord("", self.protocol, "")
        record.model = self.model[:256]  # a request's name, for the log: bounded
        self.record = record
        self.start = time.perf_counter()
        return record

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, _: Any
    ) -> None:
        elapsed = time.perf_counter() - self.start
        record = self.record
        if kind is None:
            status = "OK"
        elif isinstance(error, ServingError):
            status = error.status
            record.error = bounded_message(error.message)
        elif isinstance(error, asyncio.CancelledError):
            # The client went away (gRPC cancel or deadline, HTTP disconnect): not a server fault.
            status = "CANCELLED"
        else:
            status = "INTERNAL"
        record.status = status
        dataplane, model = self.dataplane, self.model
        if not record.version and model not in dataplane.repository.models:
            model = UNKNOWN_MODEL
        dataplane.metrics.count_request(model, record.version, self.protocol, status, elapsed)


@dataclass(frozen=True)
class Limits:
    """Per-request limits and the decode pool's size."""

    max_request_batch: int = 1024
    request_timeout_s: float = 30.0
    max_tensor_bytes: int = 64 * 1024 * 1024
    max_image_pixels: int = 0
    max_request_image_pixels: int = 0
    decode_threads: int = 1
    decode_queue: int = 64
    json_offload_bytes: int = 256 * 1024
    json_decode_processes: int = 1


class DataPlane:
    """One instance per gateway, shared by every transport."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: GatewayMetrics,
        limits: Limits,
        observer: Observer | None = None,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        #: every transport begins and ends each request's record here (access log, traces)
        self.observer = observer or Observer()
        self.limits = limits
        self.input_limits = InputLimits(
            limits.max_request_batch,
            limits.max_tensor_bytes,
            limits.max_image_pixels,
            limits.max_request_image_pixels,
        )
        self.decode_pool = DecodePool(limits.decode_threads, limits.decode_queue)
        self.json_pool = DecodePool(
            limits.json_decode_processes, limits.decode_queue, "JSON decode", processes=True
        )
        #: SIGTERM: readiness is false while in-flight and arriving requests are still served...
        self.draining = False
        #: ...until the listeners are closed and the models are being unloaded.
        self.stopped = False

    # --- accounting ---------------------------------------------------------------------------
    def observe(self, protocol: str, model: str) -> Accounting:
        """``with dp.observe(protocol, model) as record:`` counts one request by model, version,
        protocol and final status, and times it; the task's request record (``observe.current``,
        set by the transport) gets the model, the version, the status and a failure's message."""
        return Accounting(self, protocol, model)

    def deadline(self, timeout_s: float | None) -> float:
        """A monotonic deadline from a client timeout (None = the server default), capped at ten
        times the default; a timeout already spent (<= 0) gives a deadline that has passed."""
        if timeout_s is None:
            timeout_s = self.limits.request_timeout_s
        return time.monotonic() + min(timeout_s, self.limits.request_timeout_s * 10)

    def close(self) -> None:
        """Release what the dataplane itself holds (the decode pools); models are the repository's."""
        self.decode_pool.close()
        self.json_pool.close()

    # --- lookups ------------------------------------------------------------------------------
    def resolve(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> ModelVersion:
        """The serving version for a request (NotFound / Unavailable otherwise)."""
        if self.stopped:
            raise Unavailable("server is shutting down")
        return self.repository.resolve(model, version, label)

    def ready(self) -> bool:
        """Ready for traffic: every model has a version and we are not draining."""
        return not self.draining and self.repository.ready()

    # --- inference ----------------------------------------------------------------------------
    def admit(self, mv: ModelVersion, nbytes: int) -> None:
        """Admission before any decoding, in constant time: ResourceExhausted (429, with
        ``retry_after_s``) when ``mv``'s queue refuses a request of about ``nbytes``."""
        assert mv.batcher is not None
        mv.batcher.admit(nbytes)

    async def predict(
        self,
        mv: ModelVersion,
        inputs: dict[str, np.ndarray],
        *,
        deadline: float,
        signature_name: str | None = None,
        output_filter: list[str] | None = None,
        declared: bool = False,
    ) -> dict[str, np.ndarray]:
        """Validate ``inputs`` against ``mv``'s spec and run them (batched) on its runtime
        (``declared``: the decoder checked each input's declared dtype and shape already)."""
        if signature_name not in (None, "", DEFAULT_SIGNATURE):
            raise InvalidArgument(
                f"signature {shown(signature_name)} not found; model '{mv.model}' has '{DEFAULT_SIGNATURE}'"
            )
        assert mv.runtime is not None and mv.batcher is not None
        outputs_wanted = self._check_output_filter(mv, output_filter)
        validate_inputs(inputs, mv.runtime.inputs, self.input_limits, declared=declared)
        mv.inflight += 1
        start, ok = time.perf_counter_ns(), False
        try:
            outputs = await mv.batcher.infer(inputs, deadline)
            ok = True
        finally:
            mv.inflight -= 1
            first = next(iter(inputs.values()), None) if ok else None
            rows = (first.shape[0] if first.ndim else 1) if first is not None else 0
            mv.batcher.stats.note_request(ok, time.perf_counter_ns() - start, rows)
            record = current.get()
            if record is not None:
                record.rows = rows
        if outputs_wanted is not None:
            outputs = {name: outputs[name] for name in outputs_wanted}
        return outputs

    @staticmethod
    def _check_output_filter(mv: ModelVersion, output_filter: list[str] | None) -> list[str] | None:
        if not output_filter:
            return None
        assert mv.runtime is not None
        known = [spec.name for spec in mv.runtime.outputs]
        unknown = [name for name in output_filter if name not in known]
        if unknown:
            raise InvalidArgument(
                f"output_filter names unknown output {shown_list(unknown)}; "
                f"model outputs: {', '.join(known)}"
            )
        return list(dict.fromkeys(output_filter))

    async def classify_image(
        self, mv: ModelVersion, image: bytes, top_k: int, deadline: float
    ) -> list[dict[str, Any]]:
        """Decode and preprocess one image per the model's metadata; top-k labels with scores."""
        if top_k < 1:
            raise InvalidArgument(f"top_k must be at least 1, got {top_k}")
        name, image_spec = self.image_input(mv)
        self.admit(mv, len(image))
        pixels = await self.decode_image(image, image_spec)
        batch = pixels[None]
        declared = mv.declared_preprocessing
        if declared is not None:  # the model's own float input: what its metadata declares
            # One image of the model's input size: on the loop when small, as decoding is.
            if image_spec.height * image_spec.width <= INLINE_IMAGE_PIXELS:
                batch = declared.apply(batch)
            else:
                batch = await self.decode_pool.run(declared.apply, batch)
        outputs = await self.predict(mv, {name: batch}, deadline=deadline)
        scores = np.asarray(next(iter(outputs.values()))[0], dtype=np.float64).ravel()
        names = mv.class_names or [str(i) for i in range(scores.size)]
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [
            {
                "label": str(names[i]) if i < len(names) else str(i),
                "index": int(i),
                "score": float(scores[i]),
            }
            for i in order
        ]

    def image_input(self, mv: ModelVersion) -> tuple[str, images.ImageSpec]:
        """The name and image spec of the model's one input; InvalidArgument for a model that
        does not take a single uint8 NHWC image and declares no preprocessing (metadata.json's
        ``preprocessing`` with ``inside_model: false``, checked against the model at load)."""
        assert mv.runtime is not None
        spec = mv.runtime.inputs[0]
        declared = mv.declared_preprocessing
        if declared is not None:
            return spec.name, images.ImageSpec(declared.height, declared.width, declared.channels)
        if len(mv.runtime.inputs) != 1 or spec.dtype != np.uint8 or len(spec.shape) != 4:
            raise InvalidArgument(f"model '{mv.model}' does not take a single uint8 NHWC image")
        return spec.name, images.ImageSpec.from_metadata(mv.metadata, spec.shape)

    def image_pixel_limit(self, mv: ModelVersion) -> int:
        """The most pixels an image for ``mv`` may declare (InvalidArgument as image_input)."""
        return images.pixel_limit(self.image_input(mv)[1], self.limits.max_image_pixels)

    async def decode_image(self, data: bytes, spec: images.ImageSpec) -> np.ndarray:
        """``images.decode_image`` within the pixel limit: small images inline, others in the
        decode pool (429 when it is full). An image whose header declares more pixels than the
        limit is refused here (413), before it waits for the pool."""
        limit = images.pixel_limit(spec, self.limits.max_image_pixels)
        if len(data) <= INLINE_IMAGE_BYTES:
            width, height = images.declared_size(data)
            images.check_size((width, height), limit)
            if width * height <= INLINE_IMAGE_PIXELS:
                return images.decode_image(data, spec, limit)
        else:
            # Only a bounded peek on the loop: the full header checks walk up to one step per
            # 2 KiB of a big image, and run in the pool.
            size = images.peek_size(data[: images.PEEK_BYTES])
            if size is not None:
                images.check_size(size, limit)
        return await self.decode_pool.run(images.decode_image, data, spec, limit)

    def offloads_json(self, body_bytes: int) -> bool:
        """Whether a JSON body this big is decoded in the JSON decode processes: parsing it on
        the event loop would stall every other request for as long (JSON parsers hold the GIL)."""
        return 0 < self.limits.json_offload_bytes <= body_bytes

    # --- descriptions -------------------------------------------------------------------------
    def statuses(
        self, model: str, version: int | None = None, label: str | None = None
    ) -> list[ModelVersion]:
        """Version statuses for TF Serving's GetModelStatus (all versions, or the one asked for)."""
        entry = self.repository.entry(model)
        if label is not None or version is not None:
            if label is not None and label not in entry.labels:
                self.repository.resolve(model, None, label)  # raises the NotFound naming the label
            wanted = entry.labels[label] if label is not None else version
            mv = entry.versions.get(wanted)  # type: ignore[arg-type]
            if mv is None:
                raise NotFound(f"version {wanted} of model '{model}' not found")
            return [mv]
        if not entry.versions:
            self.repository.resolve(model)  # raises NotFound: the model has no versions
        return sorted(entry.versions.values(), key=lambda mv: mv.version, reverse=True)

    def statistics(
        self, model: str | None, version: int | None = None
    ) -> list[tuple[str, int, InferenceStats]]:
        """(model, version, counters) for Triton's statistics extension, both transports: the
        available versions of ``model`` (NotFound when unknown), or of every model by name; only
        ``version`` when given (NotFound for a model without it available). Oldest first."""
        repository = self.repository
        if model:
            entries = [repository.entry(model)]
        else:
            entries = [repository.entry(name) for name in sorted(repository.models)]
        result: list[tuple[str, int, InferenceStats]] = []
        for entry in entries:
            versions = entry.available()
            if version is not None:
                versions = [mv for mv in versions if mv.version == version]
                if not versions:
                    raise NotFound(f"version {version} of model '{entry.name}' is not available")
            for mv in sorted(versions, key=lambda mv: mv.version):
                assert mv.batcher is not None  # every available version has one
                result.append((mv.model, mv.version, mv.batcher.stats))
        return result
