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
- **One span per batch** (``batch``, kind INTERNAL) with Triton's phases as attributes
  (``serving.batch.input_ns``, ``serving.infer_ns``, ``serving.batch.output_ns``: three child
  spans would double what a batch costs to export), linked to the span of every traced request in
  it: a batch runs requests of several traces, so it is the root of a trace of its own, as
  OpenTelemetry's semantic conventions recommend for batch processing, and it is recorded
  whenever at least one of its requests is.

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
from typing import Any

import grpc
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import serving
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
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_UNSET = Status(StatusCode.UNSET)
#: a well-formed version-00 traceparent whose caller did not sample it (flags' bit 0 unset):
#: ParentBased drops it, decided here without the propagator and the SDK (about 8 us a request)
_UNSAMPLED = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f][02468ace]")


class _Resource(Resource):
    """The gateway's resource, hashed once. The OTLP encoder groups spans by resource and so
    hashes it once per span, and Resource's hash is a ``json.dumps`` of its attributes (7 us a
    span, benchmarks/RESULTS.md); its attributes are immutable, so the hash is too."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class _Started:
    """A traced request's span before it is built: its own context and its parent's (the
    caller's, from a traceparent; None for a root)."""

    __slots__ = ("context", "parent")

    def __init__(self, context: SpanContext, parent: SpanContext | None) -> None:
        self.context, self.parent = context, parent

    def get_span_context(self) -> SpanContext:
        return self.context


def _span_id() -> int:
    """A random, non-zero 64-bit span id (as the SDK's RandomIdGenerator draws them)."""
    span_id = random.getrandbits(64)
    while span_id == 0:  # pragma: no cover - one draw in 2**64
        span_id = random.getrandbits(64)
    return span_id


def _ns(perf_ns: int) -> int:
    """A perf_counter_ns reading as epoch nanoseconds (what spans carry)."""
    return perf_ns + EPOCH_OFFSET_NS


class OtelTracer:
    """The gateway's ``serving.observe.Tracer``: request and batch spans, exported over OTLP.

    Spans are built finished, as the SDK's ``ReadableSpan`` (what span processors and exporters
    take), from the record's timestamps, and handed to the batch span processor: the SDK's live
    ``Span`` (a lock, attribute validation, the sampler again for every child) would cost several
    times as much for times that are already known (benchmarks/RESULTS.md). The sampling rule is
    the SDK's: ``ParentBased(TraceIdRatioBased(sample))``, and a batch is recorded when one of
    its requests is."""

    def __init__(self, sample: float, exporter: SpanExporter | None = None) -> None:
        # Resource.create() lets our attributes win over the environment's: the environment's
        # detector is merged last instead, so OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES win.
        resource = Resource.create({SERVICE_NAME: SERVICE}).merge(OTELResourceDetector().detect())
        self.resource = _Resource(resource)
        self.sample = sample
        ratio = TraceIdRatioBased(sample)
        self._bound, self._limit = ratio.bound, ratio.TRACE_ID_LIMIT
        self.processor = BatchSpanProcessor(exporter or OTLPSpanExporter())
        self._scope = InstrumentationScope("serving", serving.__version__)
        log.info(
            "tracing %g of requests (OpenTelemetry, OTLP gRPC; service.name %s)",
            sample, resource.attributes.get(SERVICE_NAME),
        )  # fmt: skip

    # --- requests ------------------------------------------------------------------------------
    def start(self, record: RequestRecord) -> None:
        """Decide whether ``record``'s request is traced; if so, set ``record.span`` (its ids).

        A root request's trace id is drawn and compared with TraceIdRatioBased's bound; a
        well-formed traceparent decides as ParentBased does (its sampled flag), an unsampled one
        without parsing it (the common case at low ratios); one that is not a valid parent makes
        the request a root."""
        traceparent = record.traceparent
        parent: SpanContext | None = None
        if traceparent is not None:
            if _UNSAMPLED.fullmatch(traceparent):
                return
            context = _propagator.extract({TRACEPARENT_HEADER: traceparent})
            found = trace.get_current_span(context).get_span_context()
            if found.is_valid:
                if not found.trace_flags.sampled:
                    return
                parent = found
        if parent is None:
            trace_id = random.getrandbits(128)
            if trace_id & self._limit >= self._bound or not trace_id:
                return
            trace_state = None
        else:
            trace_id, trace_state = parent.trace_id, parent.trace_state
        if not record.start_ns:  # taken for a timed record only (the access log's, or here)
            record.start_ns = time.perf_counter_ns()
        record.span = _Started(
            SpanContext(trace_id, _span_id(), False, _SAMPLED, trace_state), parent
        )

    def end(self, record: RequestRecord) -> None:
        """``record``'s request was answered: its span and child spans, exported."""
        started: _Started | None = record.span
        if started is None:
            return
        record.span = None  # ended once, whoever calls again
        context = started.context
        self._child(context, "decode", record.decode_start_ns, record.decode_end_ns)
        if record.enqueued_ns:
            self._child(context, "queue", record.enqueued_ns, record.compute_start_ns)
        batch = record.batch
        if record.compute_start_ns and batch is not None:
            self._child(
                context, "compute", record.compute_start_ns, batch.end_ns,
                {
                    "serving.batch.rows": batch.rows,
                    "serving.batch.padded_rows": batch.padded_rows,
                    "serving.infer_ns": batch.infer_end_ns - batch.infer_start_ns,
                },
            )  # fmt: skip
        self._child(context, "encode", record.encode_start_ns, record.encode_end_ns)
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
        status = (
            Status(StatusCode.ERROR, record.error[:MAX_ERROR_CHARS] or None) if failed else _UNSET
        )
        self.processor.on_end(
            ReadableSpan(
                f"{record.protocol} {record.route}", context, started.parent, self.resource,
                attributes, kind=SpanKind.SERVER, status=status,
                start_time=_ns(record.start_ns), end_time=_ns(record.end_ns),
                instrumentation_scope=self._scope,
            )
        )  # fmt: skip

    def _child(
        self, parent: SpanContext, name: str, start_ns: int, end_ns: int,
        attributes: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        if not start_ns or not end_ns:
            return
        context = SpanContext(parent.trace_id, _span_id(), False, _SAMPLED, parent.trace_state)
        self.processor.on_end(
            ReadableSpan(
                name, context, parent, self.resource, attributes or {},
                kind=SpanKind.INTERNAL, start_time=_ns(start_ns), end_time=_ns(end_ns),
                instrumentation_scope=self._scope,
            )
        )  # fmt: skip

    # --- batches -------------------------------------------------------------------------------
    def batch(self, batch: BatchRecord) -> None:
        """One model execution: a span linked to every traced request in it (none when none of
        its requests is traced), with Triton's three compute phases as attributes."""
        links = [Link(record.span.context) for record in batch.records if record.span is not None]
        if not links:
            return
        trace_id = 0
        while not trace_id:
            trace_id = random.getrandbits(128)
        self.processor.on_end(
            ReadableSpan(
                "batch",
                SpanContext(trace_id, _span_id(), False, _SAMPLED),
                None,
                self.resource,
                {
                    "serving.model": batch.model,
                    "serving.model.version": str(batch.version),
                    "serving.batch.rows": batch.rows,
                    "serving.batch.padded_rows": batch.padded,
                    "serving.batch.requests": batch.requests,
                    "serving.batch.input_ns": batch.infer_start_ns - batch.start_ns,
                    "serving.infer_ns": batch.infer_end_ns - batch.infer_start_ns,
                    "serving.batch.output_ns": batch.end_ns - batch.infer_end_ns,
                },
                links=links,
                kind=SpanKind.INTERNAL,
                start_time=_ns(batch.start_ns),
                end_time=_ns(batch.end_ns),
                instrumentation_scope=self._scope,
            )
        )

    def flush(self) -> None:
        """Export what is buffered now."""
        self.processor.force_flush()

    def close(self) -> None:
        """Export what is buffered (within the processor's export timeout), then stop."""
        self.processor.shutdown()
