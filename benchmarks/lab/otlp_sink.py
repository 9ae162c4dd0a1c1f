"""An OTLP trace receiver that counts what it is sent: a collector for pricing tracing.

The gateway's tracing is measured against a real receiver, so the exporter's thread does the work
it does in production (serialize, send over gRPC) rather than failing fast against nothing. It
listens on 127.0.0.1 and stops by itself after ``--seconds`` (or at SIGINT or SIGTERM), printing the spans
and export calls received:

    .venv/bin/python -m benchmarks.lab.otlp_sink --port 4317 --seconds 900 &
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 .venv/bin/python -m benchmarks.lab.ab_speed \\
        --a . --b . --b-options "--trace-sample 0.01"
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class CountingReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Counts spans and export calls; keeps nothing."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans = 0
        self.exports = 0

    def Export(self, request: Any, context: Any) -> Any:
        spans = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        with self.lock:
            self.spans += spans
            self.exports += 1
        return trace_service_pb2.ExportTraceServiceResponse()


def serve(port: int) -> tuple[grpc.Server, CountingReceiver, int]:
    """A started receiver on 127.0.0.1:``port`` (0: any free port) and the port it got."""
    receiver = CountingReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, receiver, bound


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=4317, help="port on 127.0.0.1 (0: any)")
    parser.add_argument("--seconds", type=float, default=600, help="stop after this long")
    args = parser.parse_args()
    server, receiver, port = serve(args.port)
    print(f"OTLP receiver on 127.0.0.1:{port} for {args.seconds:g} s", flush=True)
    stop = threading.Event()
    # Both, explicitly: a shell script's background job starts with SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait(args.seconds)
    server.stop(None)
    print(f"received {receiver.spans} spans in {receiver.exports} exports", flush=True)


if __name__ == "__main__":
    main()
