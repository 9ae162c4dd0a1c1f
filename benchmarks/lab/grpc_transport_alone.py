"""The gateway's own gRPC transport alone: a TF Serving ``Predict`` endpoint that neither parses
nor computes, on ``serving.grpc.transport`` (the gateway's default gRPC transport).

The counterpart of ``benchmarks.lab.grpc_aio_alone`` (the same prepared reply, the same uvloop):
what is left is the transport's own cost per call, the gRPC part of ``gateway_speed``'s limit. It
prints ``gRPC (transport alone) on 127.0.0.1:<port>`` once it listens (on a port the OS picks).

    python -m benchmarks.lab.grpc_transport_alone
"""

from __future__ import annotations

import asyncio
import socket

from benchmarks.lab.grpc_aio_alone import REPLY, run_on_uvloop
from clients import wire
from serving.grpc.transport import GrpcCall, GrpcLimits, GrpcServer


async def predict(request: bytes, call: GrpcCall) -> bytes:
    """Every call gets the prepared reply; the request bytes are never parsed."""
    return REPLY


async def serve() -> None:
    """Listen on 127.0.0.1 (any free port) until the process is stopped."""
    server = GrpcServer({wire.PREDICT_METHOD: predict}, {}, GrpcLimits())
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    sock.setblocking(False)
    await server.start(sock)
    print(f"gRPC (transport alone) on 127.0.0.1:{sock.getsockname()[1]}", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    run_on_uvloop(serve)


if __name__ == "__main__":
    main()
