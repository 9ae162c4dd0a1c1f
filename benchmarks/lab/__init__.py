"""The engineers' probes: each answers one question about the gateway's speed or robustness.

A user measures a server with ``python -m benchmarks run|sweep|rate|ceiling|accuracy`` (the
package above). The modules here take the gateway apart instead: timing one stage alone, a
transport with nothing behind it, two checkouts side by side. Their figures, with the commands
that made them, are in ``benchmarks/RESULTS.md``. ``python -m benchmarks.lab`` prints this index;
``python -m benchmarks --help`` names it too. Run any of them as ``python -m benchmarks.lab.NAME``
from the repository root (``--help`` for the options).

A few probes still live beside the user's tools, where other work on them is in flight; the
index lists them under their own paths (``TOP_LEVEL``).
"""

from __future__ import annotations

#: module -> the question it answers (one line each)
PROBES: dict[str, str] = {
    "gateway_speed": "How fast is the gateway per protocol against in-process ONNX Runtime, "
    "a naive FastAPI server and grpc.aio alone (wrk, h2load)?",
    "request_budget": "What does one request cost, stage by stage, against the budget in "
    "docs/ARCHITECTURE.md?",
    "ab_speed": "Did a change make the gateway faster or slower (two checkouts, interleaved rounds)?",
    "overload": "How much goodput survives 1x-8x a saturating load, and how fast are refusals?",
    "threads_speed": "Which ONNX Runtime thread count suits a light and a heavy model?",
    "rest_decode_speed": "How long does a TF Serving :predict JSON body take to decode, "
    "simdjson against Python lists?",
    "client_speed": "How fast does the TensorFlow-free client import and build requests, "
    "next to the stock TF Serving stubs?",
    "fp16_parity": "Which ops make an fp16 export lose parity with the SavedModel?",
    "noop_http": "What does the HTTP transport cost alone (the gateway's protocol, a no-op "
    "handler; a server to load with wrk)?",
    "grpc_aio_alone": "What does grpc.aio cost alone (answering without parsing; a server to "
    "load with h2load; issue 36's yardstick)?",
    "grpc_transport_alone": "What does the gateway's own gRPC transport cost alone (answering "
    "without parsing; a server to load with h2load)?",
    "grpc_floor": "How fast can grpc.aio refuse a flood at best (a server that refuses every call)?",
    "precision_ab": "How much faster is int8 (or fp16) than fp32, in-process and through the "
    "gateway, rounds interleaved?",
    "worker_kill": "What does a worker's death cost under load with --workers: requests lost "
    "per kill, time until its replacement is ready?",
    "naive_server": "What does a first attempt serve (FastAPI, one session.run per request): "
    "the baseline the gateway is compared with",
    "v2_grpc_speed": "How fast is KServe V2 over gRPC against the gateway's TF Serving gRPC and "
    "grpc.aio alone (h2load, rounds interleaved)?",
    "otlp_sink": "Where do traces go while tracing is priced (an OTLP receiver that counts "
    "spans and stops by itself)?",
    "cpu_per_request": "What does one request cost the server in CPU time, checkout against "
    "checkout (rounds interleaved)?",
    "instructions": "How many instructions does one request cost the gateway, checkout against "
    "checkout (valgrind's callgrind: counts that repeat within 0.1%)?",
}

#: probes not (yet) moved here, run as ``python -m benchmarks.NAME``
TOP_LEVEL: dict[str, str] = {
    "hostile_speed": "What do hostile requests (image bombs, huge JSON batches, bad gRPC) do to "
    "everyone else's p99 and to memory?",
    "gpu_check": "The gateway against its in-process ceiling on a GPU, in one short device call",
    "gpu_matrix": "Which gateway options serve a GPU best, side by side in one device call",
}


def index() -> str:
    """The index as text: one line per probe, its command and its question."""
    lines = ["Engineering probes (benchmarks/lab/; figures in benchmarks/RESULTS.md):"]
    lines += [
        f"  python -m benchmarks.lab.{name:<18} {question}" for name, question in PROBES.items()
    ]
    lines += [
        f"  python -m benchmarks.{name:<22} {question}" for name, question in TOP_LEVEL.items()
    ]
    return "\n".join(lines)
