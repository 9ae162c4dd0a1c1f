"""grpc.aio alone: a TF Serving ``Predict`` endpoint that neither parses nor computes.

Its handler returns the gateway's reply to one LeNet image, serialised once at import, without
reading the request: what is left is the gRPC transport in one Python process on uvloop (as the
gateway runs), the ceiling ``gateway_speed`` compares the gateway's gRPC numbers with. It prints
``gRPC (grpc.aio alone) on 127.0.0.1:<port>`` once it listens (on a port the OS picks).

    python -m benchmarks.lab.grpc_aio_alone
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import numpy as np

from clients import wire
from clients.codec import ndarray_to_tensor_proto


def prepared_reply() -> bytes:
    """A serialised ``PredictResponse`` for model ``lenet``: one row of ten probabilities."""
    reply = wire.PredictResponse()
    reply.outputs["probabilities"].CopyFrom(
        ndarray_to_tensor_proto(np.full((1, 10), 0.1, np.float32))
    )
    reply.model_spec.name = "lenet"
    return reply.SerializeToString()


REPLY = prepared_reply()


async def predict(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    """Every call gets the prepared reply; the request bytes are never parsed."""
    return REPLY


async def serve() -> None:
    """Listen on 127.0.0.1 (any free port) until the process is stopped."""
    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(predict)  # bytes in, bytes out
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(wire.PREDICTION_SERVICE, {"Predict": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"gRPC (grpc.aio alone) on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


def run_on_uvloop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``main()`` on uvloop as the gateway runs (asyncio's own loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


def main() -> None:
    run_on_uvloop(serve)


if __name__ == "__main__":
    main()
