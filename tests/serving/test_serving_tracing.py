"""OpenTelemetry traces (``--trace-sample``, ``serving/tracing.py``) from a real gateway process,
received by an OTLP gRPC receiver in the test (``opentelemetry-proto``'s ``TraceService``): a span
per request with its decode/queue/compute/encode children, W3C ``traceparent`` followed over REST
and gRPC (sampled: continued; unsampled: not traced), batch spans linked to every request they ran;
and with tracing off, no OpenTelemetry SDK in the process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from clients import wire
from clients.codec import ndarray_to_tensor_proto
from tests.serving.conftest import MODEL
from tests.serving.serving_harness import GatewayProcess, predict_call, wait_until
from tests.tiny_models import sample_images

ROOT = Path(__file__).resolve().parents[2]
SERVER = trace_pb2.Span.SpanKind.SPAN_KIND_SERVER
CHILDREN = ("decode", "queue", "compute", "encode")
#: a batch waits this long for more rows once compute is free: concurrent requests share one
BATCH_TIMEOUT_US = 100_000


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector: keeps every span it is sent, with its resource's attributes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[trace_pb2.Span] = []
        self.resources: list[dict[str, Any]] = []

    def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for resource_spans in request.resource_spans:
                self.resources.append(attributes(resource_spans.resource))
                for scope_spans in resource_spans.scope_spans:
                    self.spans.extend(scope_spans.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def snapshot(self) -> list[trace_pb2.Span]:
        with self.lock:
            return list(self.spans)


def attributes(message: Any) -> dict[str, Any]:
    """A span's (or resource's) attributes as a dict of plain values."""
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in message.attributes}


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


@pytest.fixture(scope="module")
def traced(tiny_repo: Path, receiver: tuple[Receiver, int]) -> Iterator[GatewayProcess]:
    """A gateway process tracing every request, exporting to the receiver every 50 ms."""
    _, port = receiver
    with pytest.MonkeyPatch.context() as env:  # GatewayProcess hands os.environ to the child
        env.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        env.setenv("OTEL_EXPORTER_OTLP_INSECURE", "true")
        env.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
        env.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=test")
        env.delenv("OTEL_SERVICE_NAME", raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        process = GatewayProcess(
            tiny_repo, "--trace-sample", "1.0", "--batch-timeout-us", str(BATCH_TIMEOUT_US)
        )
    try:
        yield process
    finally:
        process.stop()


def request_spans(spans: list[trace_pb2.Span], request_id: str) -> list[trace_pb2.Span]:
    return [
        span
        for span in spans
        if span.kind == SERVER and attributes(span).get("serving.request.id") == request_id
    ]


def wait_for_requests(receiver: Receiver, *request_ids: str) -> list[trace_pb2.Span]:
    """Every span received once each of ``request_ids`` has its request span (the request span
    ends last: its children were exported with it or before)."""
    wait_until(
        lambda: all(request_spans(receiver.snapshot(), rid) for rid in request_ids),
        20,
        what=f"the spans of {request_ids}",
    )
    return receiver.snapshot()


def children_of(spans: list[trace_pb2.Span], parent: trace_pb2.Span) -> dict[str, trace_pb2.Span]:
    found = [
        span
        for span in spans
        if span.trace_id == parent.trace_id and span.parent_span_id == parent.span_id
    ]
    by_name = {span.name: span for span in found}
    assert len(by_name) == len(found), [span.name for span in found]
    return by_name


def rest_predict(url: str, request_id: str, **headers: str) -> None:
    body = {"instances": sample_images(1).tolist()}
    answer = httpx.post(
        f"{url}/v1/models/{MODEL}:predict",
        json=body,
        headers={"x-request-id": request_id, **headers},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-request-id"] == request_id


def grpc_predict(target: str, request_id: str, *metadata: tuple[str, str]) -> None:
    request = wire.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["image"].CopyFrom(ndarray_to_tensor_proto(sample_images(1)))
    with grpc.insecure_channel(target) as channel:
        predict_call(channel)(
            request, metadata=(("x-request-id", request_id), *metadata), timeout=30
        )


def assert_request_tree(spans: list[trace_pb2.Span], span: trace_pb2.Span) -> None:
    """``span``'s four children, inside its time range, in order."""
    children = children_of(spans, span)
    assert set(children) == set(CHILDREN), sorted(children)
    previous_end = span.start_time_unix_nano
    for name in CHILDREN:
        child = children[name]
        assert child.kind == trace_pb2.Span.SpanKind.SPAN_KIND_INTERNAL
        assert previous_end <= child.start_time_unix_nano <= child.end_time_unix_nano, name
        previous_end = child.end_time_unix_nano
    assert previous_end <= span.end_time_unix_nano
    compute = attributes(children["compute"])
    assert compute["serving.batch.rows"] >= 1
    assert compute["serving.batch.padded_rows"] >= compute["serving.batch.rows"]


def test_a_span_per_request_with_decode_queue_compute_encode(
    traced: GatewayProcess, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    rest_predict(traced.http_url, "trace-rest-1")
    images = sample_images(2)
    answer = httpx.post(
        f"{traced.http_url}/v2/models/{MODEL}/infer",
        json={"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "UINT8",
                          "data": images.ravel().tolist()}]},
        headers={"x-request-id": "trace-v2-1"},
        timeout=30,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    grpc_predict(traced.grpc_target, "trace-grpc-1")

    spans = wait_for_requests(collector, "trace-rest-1", "trace-v2-1", "trace-grpc-1")
    expected = {
        "trace-rest-1": ("rest predict", 1),
        "trace-v2-1": ("v2 infer", 2),
        "trace-grpc-1": ("grpc Predict", 1),
    }
    for request_id, (name, rows) in expected.items():
        (span,) = request_spans(spans, request_id)
        assert span.name == name
        assert span.parent_span_id == b""  # no traceparent: a trace of its own
        assert_request_tree(spans, span)
        found = attributes(span)
        assert found["serving.model"] == MODEL
        assert found["serving.model.version"] == "2"  # the latest version serves
        assert found["serving.rows"] == rows
        assert found["serving.status"] == "OK"
        assert span.status.code == trace_pb2.Status.StatusCode.STATUS_CODE_UNSET
        if name.startswith("grpc"):
            assert found["rpc.system"] == "grpc"
            assert found["rpc.grpc.status_code"] == 0
        else:
            assert found["http.response.status_code"] == 200
    resource = collector.resources[-1]
    assert resource["service.name"] == "convnet-serving"
    assert resource["deployment.environment.name"] == "test"  # OTEL_RESOURCE_ATTRIBUTES


def test_a_failed_request_is_traced_with_its_status(
    traced: GatewayProcess, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    answer = httpx.post(
        f"{traced.http_url}/v1/models/nope:predict",
        json={"instances": sample_images(1).tolist()},
        headers={"x-request-id": "trace-404"},
        timeout=30,
    )
    assert answer.status_code == 404
    (span,) = request_spans(wait_for_requests(collector, "trace-404"), "trace-404")
    found = attributes(span)
    assert found["http.response.status_code"] == 404
    assert found["error.type"] == found["serving.status"] == "NOT_FOUND"
    assert "nope" in found["serving.error"]
    # OpenTelemetry's conventions: a server span is an error for a 5xx only, not the client's 4xx
    assert span.status.code == trace_pb2.Status.StatusCode.STATUS_CODE_UNSET


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_a_sampled_traceparent_is_continued(
    protocol: str, traced: GatewayProcess, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    trace_id, parent_id = os.urandom(16), os.urandom(8)
    traceparent = f"00-{trace_id.hex()}-{parent_id.hex()}-01"
    request_id = f"trace-parent-{protocol}"
    if protocol == "rest":
        rest_predict(traced.http_url, request_id, traceparent=traceparent)
    else:
        grpc_predict(traced.grpc_target, request_id, ("traceparent", traceparent))
    spans = wait_for_requests(collector, request_id)
    (span,) = request_spans(spans, request_id)
    assert span.trace_id == trace_id
    assert span.parent_span_id == parent_id
    assert_request_tree(spans, span)


def test_an_unsampled_traceparent_is_not_traced(
    traced: GatewayProcess, receiver: tuple[Receiver, int]
) -> None:
    """The gateway samples every request (1.0), except one whose caller decided not to (flags
    00): the request after it is exported, the unsampled one never is."""
    collector, _ = receiver
    trace_id = os.urandom(16)
    rest_predict(
        traced.http_url,
        "trace-unsampled",
        traceparent=f"00-{trace_id.hex()}-{os.urandom(8).hex()}-00",
    )
    rest_predict(traced.http_url, "trace-after-unsampled")
    spans = wait_for_requests(collector, "trace-after-unsampled")
    # Spans are exported in the order they end: the unsampled request's would have come first.
    assert not request_spans(spans, "trace-unsampled")
    assert not [span for span in spans if span.trace_id == trace_id]


def test_a_batch_span_links_every_request_in_it(
    traced: GatewayProcess, receiver: tuple[Receiver, int]
) -> None:
    collector, _ = receiver
    count = 16
    request_ids = [f"trace-batch-{i}" for i in range(count)]
    clients = [httpx.Client(timeout=30) for _ in request_ids]
    body = json.dumps({"instances": sample_images(1).tolist()})
    start = threading.Barrier(count)
    statuses: list[int] = []

    def send(client: httpx.Client, request_id: str) -> None:
        start.wait()
        answer = client.post(
            f"{traced.http_url}/v1/models/{MODEL}:predict",
            content=body,
            headers={"x-request-id": request_id, "content-type": "application/json"},
        )
        statuses.append(answer.status_code)

    threads = [
        threading.Thread(target=send, args=pair) for pair in zip(clients, request_ids, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.close()
    assert statuses == [200] * count

    wait_for_requests(collector, *request_ids)
    ours = {request_spans(collector.snapshot(), rid)[0].span_id: rid for rid in request_ids}

    def batches() -> list[trace_pb2.Span]:
        return [
            span
            for span in collector.snapshot()
            if span.name == "batch" and any(link.span_id in ours for link in span.links)
        ]

    # A batch ends before its requests' spans do, and is exported with them or before.
    wait_until(
        lambda: sum(len(batch.links) for batch in batches()) >= count, 10, what="batch spans"
    )
    spans = collector.snapshot()
    by_span_id = {span.span_id: span for span in spans if span.kind == SERVER}
    linked: list[bytes] = []
    for batch in batches():
        found = attributes(batch)
        assert batch.parent_span_id == b""  # a trace of its own: its requests are in several
        assert found["serving.model"] == MODEL and found["serving.model.version"] == "2"
        # Every request is traced (sample 1.0): the batch links each of its requests.
        assert found["serving.batch.requests"] == len(batch.links)
        assert found["serving.batch.rows"] == len(batch.links)  # one row each
        assert found["serving.batch.padded_rows"] >= found["serving.batch.rows"]
        assert children_of(spans, batch) == {}  # Triton's phases are attributes
        phases = ("serving.batch.input_ns", "serving.infer_ns", "serving.batch.output_ns")
        assert all(found[phase] >= 0 for phase in phases)
        assert sum(found[phase] for phase in phases) == (
            batch.end_time_unix_nano - batch.start_time_unix_nano
        )
        for link in batch.links:
            request = by_span_id[link.span_id]
            assert link.trace_id == request.trace_id
            linked.append(link.span_id)
            # The request's compute span is its batch: same times, same rows.
            compute = children_of(spans, request)["compute"]
            assert compute.start_time_unix_nano == batch.start_time_unix_nano
            assert compute.end_time_unix_nano == batch.end_time_unix_nano
            assert attributes(compute)["serving.batch.rows"] == found["serving.batch.rows"]
    assert sorted(linked) == sorted(ours)  # each request in exactly one batch
    assert max(len(batch.links) for batch in batches()) >= 2, [
        len(batch.links) for batch in batches()
    ]


# Starts a gateway in this interpreter, serves one request (tracing off) or none (on), stops it,
# and prints the OpenTelemetry modules loaded.
PROBE = """
import asyncio, json, sys
from pathlib import Path
import httpx
from serving.gateway import Gateway
from tests.serving.serving_harness import gateway_settings
from tests.tiny_models import sample_images

async def main():
    sample = float(sys.argv[2])
    gateway = Gateway(gateway_settings(Path(sys.argv[1]), trace_sample=sample))
    await gateway.start()
    if sample == 0:
        async with httpx.AsyncClient() as client:
            answer = await client.post(
                f"http://127.0.0.1:{gateway.http_port}/v1/models/tiny:predict",
                json={"instances": sample_images(1).tolist()}, timeout=30,
            )
            assert answer.status_code == 200, answer.text
    await gateway.stop()

asyncio.run(main())
print(json.dumps(sorted(name for name in sys.modules if name.startswith("opentelemetry"))))
"""


@pytest.mark.parametrize("sample", ["0", "0.5"])
def test_tracing_off_imports_no_opentelemetry_sdk(sample: str, tiny_repo: Path) -> None:
    """With --trace-sample 0 a gateway that started and served imports nothing of the SDK or
    the exporter (the hot path pays nothing for tracing); with tracing on it does (the probe
    sees what it should)."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, str(tiny_repo), sample],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.splitlines()[-1])
    sdk = [
        name for name in loaded if name.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))
    ]
    if sample == "0":
        assert not sdk, sdk
    else:
        assert "opentelemetry.sdk.trace" in sdk and any("otlp" in name for name in sdk)


def test_sampling_decided_before_the_sdk_is_trace_id_ratio() -> None:
    """``OtelTracer.start`` decides a root request's sampling itself (cheaper than the SDK's
    decision): about the ratio of requests are traced, each with a trace id that
    TraceIdRatioBased samples, and every one it lets through is exported."""
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import TraceIdRatioBased

    from serving.observe import RequestRecord
    from serving.tracing import OtelTracer

    exporter = InMemorySpanExporter()
    tracer = OtelTracer(0.25, exporter)
    try:
        records = [RequestRecord(f"r{i}", "rest", "predict") for i in range(4000)]
        for record in records:
            tracer.start(record)
        traced = [record for record in records if record.span is not None]
        assert 800 <= len(traced) <= 1200, len(traced)
        ratio = TraceIdRatioBased(0.25)
        for record in traced:
            trace_id = record.span.get_span_context().trace_id
            assert trace_id & ratio.TRACE_ID_LIMIT < ratio.bound
            record.end_ns = record.start_ns + 1000
            tracer.end(record)
        tracer.flush()
        assert len(exporter.get_finished_spans()) == len(traced)
    finally:
        tracer.close()


@pytest.mark.parametrize(
    ("traceparent", "traced"),
    [
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", False),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02", False),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", True),
        ("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03", True),
        # not a valid parent (zero ids, upper case, garbage): a root, sampled by the ratio (1.0)
        ("00-00000000000000000000000000000000-b7ad6b7169203331-00", True),
        ("00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-00", True),
        ("garbage", True),
    ],
)
def test_a_traceparent_decides_as_parent_based_does(traceparent: str, traced: bool) -> None:
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from serving.observe import RequestRecord
    from serving.tracing import OtelTracer

    tracer = OtelTracer(1.0, InMemorySpanExporter())
    try:
        record = RequestRecord("r", "rest", "predict")
        record.traceparent = traceparent
        tracer.start(record)
        assert (record.span is not None) == traced
        if traced and traceparent.endswith(("-01", "-03")):
            context = record.span.get_span_context()
            assert f"{context.trace_id:032x}" == traceparent.split("-")[1]
            assert record.span.parent.span_id == int(traceparent.split("-")[2], 16)
    finally:
        tracer.close()
