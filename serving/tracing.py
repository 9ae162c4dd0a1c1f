"""OpenTelemetry traces of requests and batches, exported over OTLP gRPC.

Imported only when tracing is on (``--trace-sample`` above 0, ``serving.gateway.build_observer``):
with tracing off nothing of OpenTelemetry's SDK is loaded. The gateway's own timestamps are the
spans' times (``serving.observe.RequestRecord``, ``BatchRecord``): spans are built after the fact,
when a request has been answered and when a batch has run, so a traced request pays for its
spans once, off its critical path, and an untraced one only for the sampling decision.

- **One span per request** (kind SERVER, ``"<protocol> <route>"``, e.g. ``rest predict``,
  ``grpc Predict``), child of the client's W3C ``traceparent`` when it sent one, with child spans
  ``decode``, ``queue`` (in the batcher's queue, waiting for a batch and a compute slot),
  ``compute`` (its batch: inputs merged, ONNX Runtime, rows handed back) and ``encode``, each
  only when the request got that far.
- **One span per batch** (``batch``, kind INTERNAL) with children ``input``, ``infer`` and
  ``output`` (Triton's phases), linked to the span of every traced request in it: a batch runs
  requests of several traces, so it is the root of a trace of its own, as OpenTelemetry's
  semantic conventions recommend for batch processing, and it is recorded whenever at least one
  of its requests is.

Sampling: ``ParentBased(TraceIdRatioBased(sample))``: a request with a sampled traceparent is
traced, one with an unsampled traceparent is not, others by the ratio. The exporter (endpoint,
headers, TLS, timeout) and the batch span processor read the standard ``OTEL_EXPORTER_OTLP_*``
and ``OTEL_BSP_*`` environment variables; ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
override the resource's ``service.name`` (``convnet-serving``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import Attributes

from serving.errors import STATUS_TABLE
from serving.observe import EPOCH_OFFSET_NS, TRACEPARENT_HEADER, BatchRecord, RequestRecord

log = logging.getLogger(__name__)

#: the resource's service.name unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES say otherwise
SERVICE = "convnet-serving"
#: the protocols of RequestRecord served over gRPC (serving/grpc/server.py), the others are HTTP
GRPC_PROTOCOLS = frozenset({"grpc", "v2-grpc"})
#: gRPC codes that make a server span ERROR (OpenTelemetry's semantic conventions for RPC)
GRPC_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
#: the longest error message set as a span's status description
MAX_ERROR_CHARS = 256

_propagator = TraceContextTextMapPropagator()
#: no parent: a request without a traceparent, a batch (never the task's ambient OTel context)
_ROOT = Context()
#: a well-formed version-00 traceparent whose caller did not sample it (flags' bit 0 unset):
#: ParentBased drops it, decided here without the propagator and the SDK (about 8 us a request)
_UNSAMPLED = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")


class _BatchSampler(Sampler):
    """``ParentBased(TraceIdRatioBased(ratio))`` for requests; a root span that links a sampled
    span (a batch of traced requests) is sampled whatever the ratio, so every traced request's
    batch is recorded."""

    def __init__(self, ratio: TraceIdRatioBased) -> None:
        self.requests = ParentBased(ratio)

    def should_sample(
        self, parent_context: Context | None, trace_id: int, name: str,
        kind: SpanKind | None = None, attributes: Attributes = None,
        links: Sequence[Link] | None = None, trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:  # fmt: skip
        if (
            links
            and not trace.get_current_span(parent_context).get_span_context().is_valid
            and any(link.context.trace_flags.sampled for link in links)
        ):
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self.requests.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"FollowLinks{{{self.requests.get_description()}}}"


class _DrawnIds(RandomIdGenerator):
    """Random ids, except a root request's trace id drawn (and found sampled) by
    ``OtelTracer.start`` before the SDK was asked: the sampler then sees that same id."""

    drawn = 0

    def generate_trace_id(self) -> int:
        trace_id, self.drawn = self.drawn, 0
        return trace_id or super().generate_trace_id()


def _ns(perf_ns: int) -> int:
    """A perf_counter_ns reading as epoch nanoseconds (what spans carry)."""
    return perf_ns + EPOCH_OFFSET_NS


class OtelTracer:
    """The gateway's ``serving.observe.Tracer``: request and batch spans, exported over OTLP."""

    def __init__(self, sample: float, exporter: SpanExporter | None = None) -> None:
        # Resource.create() lets our attributes win over the environment's: the environment's
        # detector is merged last instead, so OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win.
        resource = Resource.create({SERVICE_NAME: SERVICE}).merge(OTELResourceDetector().detect())
        self.sample = sample
        ratio = TraceIdRatioBased(sample)
        self._bound, self._limit = ratio.bound, ratio.TRACE_ID_LIMIT
        self._ids = _DrawnIds()
        self.provider = TracerProvider(
            resource=resource, sampler=_BatchSampler(ratio), id_generator=self._ids
        )
        self.provider.add_span_processor(BatchSpanProcessor(exporter or OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("serving")
        log.info(
            "tracing %g of requests (OpenTelemetry, OTLP gRPC; service.name %s)",
            sample, resource.attributes.get(SERVICE_NAME),
        )  # fmt: skip

    # --- requests ------------------------------------------------------------------------------
    def start(self, record: RequestRecord) -> None:
        """Decide whether ``record``'s request is traced; if so, start its span.

        The SDK's decision for an untraced request costs about 4 us (8 more to parse a
        traceparent), paid by every request at a low ratio: the two common cases are decided
        here first, with the sampler's own rule. A root request's trace id is drawn as the SDK
        would and compared with TraceIdRatioBased's bound (only a sampled id goes on, to the
        SDK, whose sampler sees the same id); an unsampled, well-formed traceparent is dropped
        as ParentBased would. Anything else goes to the propagator and the SDK."""
        traceparent = record.traceparent
        if traceparent is None:
            trace_id = random.getrandbits(128)
            if trace_id & self._limit >= self._bound:
                return
            self._ids.drawn = trace_id
            context = _ROOT
        elif _UNSAMPLED.fullmatch(traceparent):
            return
        else:
            context = _propagator.extract({TRACEPARENT_HEADER: traceparent})
        if not record.start_ns:  # taken for a timed record only (the access log's, or here)
            record.start_ns = time.perf_counter_ns()
        span = self.tracer.start_span(
            f"{record.protocol} {record.route}",
            context,
            SpanKind.SERVER,
            start_time=_ns(record.start_ns),
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            record.span = span

    def end(self, record: RequestRecord) -> None:
        """``record``'s request was answered: its child spans, attributes and status; ends its
        span at ``record.end_ns``."""
        span = record.span
        if span is None:
            return
        record.span = None  # ended once, whoever calls again
        if record.route:  # an HTTP request's route is known only once the app matched it
            span.update_name(f"{record.protocol} {record.route}")
        parent = trace.set_span_in_context(span)
        self._child(parent, "decode", record.decode_start_ns, record.decode_end_ns)
        if record.enqueued_ns:
            self._child(parent, "queue", record.enqueued_ns, record.compute_start_ns)
        batch = record.batch
        if record.compute_start_ns and batch is not None:
            self._child(
                parent, "compute", record.compute_start_ns, batch.end_ns,
                {
                    "serving.batch.rows": batch.rows,
                    "serving.batch.padded_rows": batch.padded_rows,
                    "serving.infer_ns": batch.infer_end_ns - batch.infer_start_ns,
                },
            )  # fmt: skip
        self._child(parent, "encode", record.encode_start_ns, record.encode_end_ns)
        attributes: dict[str, Any] = {
            "serving.request.id": record.id,
            "serving.protocol": record.protocol,
            "serving.route": record.route,
            "serving.status": record.status or ("OK" if record.http_status < 400 else "ERROR"),
        }
        if record.model:
            attributes["serving.model"] = record.model
        if record.version:
            attributes["serving.model.version"] = str(record.version)
        if record.rows:
            attributes["serving.rows"] = record.rows
        if record.bytes_in:
            attributes["serving.bytes_in"] = record.bytes_in
        if record.bytes_out:
            attributes["serving.bytes_out"] = record.bytes_out
        peer = record.peer
        if isinstance(peer, tuple) and len(peer) >= 2:
            attributes["client.address"], attributes["client.port"] = str(peer[0]), peer[1]
        failed = False
        if record.protocol in GRPC_PROTOCOLS:
            code = STATUS_TABLE.get(record.status, (0, grpc.StatusCode.UNKNOWN))[1]
            attributes["rpc.system"] = "grpc"
            attributes["rpc.method"] = record.route
            attributes["rpc.grpc.status_code"] = code.value[0]
            failed = code in GRPC_SERVER_ERRORS
        else:
            if record.http_status:
                attributes["http.response.status_code"] = record.http_status
            failed = record.http_status >= 500
        if record.error or record.http_status >= 400:
            attributes["error.type"] = record.status or str(record.http_status)
            if record.error:
                attributes["serving.error"] = record.error
        span.set_attributes(attributes)
        if failed:
            span.set_status(Status(StatusCode.ERROR, record.error[:MAX_ERROR_CHARS] or None))
        span.end(_ns(record.end_ns))

    def _child(
        self, parent: Context, name: str, start_ns: int, end_ns: int,
        attributes: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if not start_ns or not end_ns:
            return
        child = self.tracer.start_span(
            name, parent, SpanKind.INTERNAL, attributes, start_time=_ns(start_ns)
        )
        child.end(_ns(end_ns))

    # --- batches -------------------------------------------------------------------------------
    def batch(self, batch: BatchRecord) -> None:
        """One model execution: a span linked to every traced request in it (none when none of
        its requests is traced)."""
        links = [
            Link(record.span.get_span_context())
            for record in batch.records
            if record.span is not None
        ]
        if not links:
            return
        span = self.tracer.start_span(
            "batch",
            _ROOT,
            SpanKind.INTERNAL,
            {
                "serving.model": batch.model,
                "serving.model.version": str(batch.version),
                "serving.batch.rows": batch.rows,
                "serving.batch.padded_rows": batch.padded,
                "serving.batch.requests": batch.requests,
            },
            links,
            start_time=_ns(batch.start_ns),
        )
        if not span.is_recording():
            return
        parent = trace.set_span_in_context(span)
        self._child(parent, "input", batch.start_ns, batch.infer_start_ns)
        self._child(parent, "infer", batch.infer_start_ns, batch.infer_end_ns)
        self._child(parent, "output", batch.infer_end_ns, batch.end_ns)
        span.end(_ns(batch.end_ns))

    def close(self) -> None:
        """Export what is buffered (within the processor's export timeout), then stop."""
        self.provider.shutdown()
