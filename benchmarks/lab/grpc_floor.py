"""A grpc.aio server that refuses every Predict call at once: the floor of gRPC refusal latency.

No model, no decode, no admission logic: the handler aborts with RESOURCE_EXHAUSTED as its first
statement, on the same stack as the gateway (grpc.aio on uvloop, one process). Whatever latency a
client sees for these refusals under a flood is what grpc.aio itself costs, so
``benchmarks/lab/overload.py --grpc-floor`` runs it beside the gateway to tell the gateway's share from
the framework's.

    .venv/bin/python -m benchmarks.lab.grpc_floor --port 0 [--max-streams-per-connection N]
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc

from clients import wire


async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> Any:
    await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "refused by the floor server")


async def serve(port: int, max_streams_per_connection: int) -> None:
    options: list[tuple[str, Any]] = []
    if max_streams_per_connection > 0:
        options.append(("grpc.max_concurrent_streams", max_streams_per_connection))
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                wire.PREDICTION_SERVICE,
                {"Predict": grpc.unary_unary_rpc_method_handler(refuse)},
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"gRPC floor server on 127.0.0.1:{bound}", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--max-streams-per-connection", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(args.port, args.max_streams_per_connection))


if __name__ == "__main__":
    main()
