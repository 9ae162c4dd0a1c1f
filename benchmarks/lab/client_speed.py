"""How fast the TensorFlow-free client starts and builds requests, next to the stock route.

Measures, side by side in one run:

1. Import time, each in fresh interpreters (median of ``--imports`` runs): ``import clients``;
   ``import clients`` plus making a gRPC and an HTTP client (which loads grpc and httpx); and the
   stock ``from tensorflow_serving.apis import predict_pb2`` (which imports TensorFlow).
2. Building a serialized Predict request for a ``[64, 28, 28, 1]`` uint8 batch: ours
   (``clients.wire.encode_predict_request``, what the gRPC client sends, and the message route
   ``build_predict_request`` + serialize) against the stock way (``tf.make_tensor_proto`` into
   ``tensorflow_serving.apis.predict_pb2.PredictRequest``) and against ``tf.make_tensor_proto``
   alone; the tensor encoders alone as well. ``encode_predict_request`` caches a request's
   framing per model spec and input name/dtype/shape, so it is timed warm (a client sending
   batches of one shape) and cold (caches cleared before every call).
3. Decoding a ``[64, 10]`` float32 output: ``clients.codec.tensor_proto_to_ndarray`` against
   ``tf.make_ndarray``.

Run: ``.venv/bin/python -m benchmarks.lab.client_speed`` (``--json`` for machine output). It prints
numbers and ratios; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BATCH_SHAPE = (64, 28, 28, 1)

IMPORT_SNIPPETS = {
    "import clients": "import clients",
    "import clients + Client(grpc) + Client(http)": (
        "import clients; clients.Client('grpc://127.0.0.1:1').close(); "
        "clients.Client('http://127.0.0.1:1').close()"
    ),
    "stock: from tensorflow_serving.apis import predict_pb2": (
        "from tensorflow_serving.apis import predict_pb2"
    ),
}


def time_import(snippet: str, runs: int) -> float:
    """Median seconds for ``snippet`` in a fresh interpreter, minus the bare interpreter start."""
    code = f"import time; t = time.perf_counter(); {snippet}; print(time.perf_counter() - t)"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    samples = []
    for _ in range(runs):
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        samples.append(float(result.stdout.strip().splitlines()[-1]))
    return statistics.median(samples)


def per_call_us(function: Callable[[], Any], repeat: int) -> float:
    """Best-of-``repeat`` microseconds per call (timeit's autorange picks the loop count)."""
    timer = timeit.Timer(function)
    loops, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=loops)) / loops * 1e6


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every measurement, print them, and return them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imports", type=int, default=5, help="fresh interpreters per import (5)")
    parser.add_argument("--repeat", type=int, default=7, help="timeit repeats, best kept (7)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {"imports_s": {}, "build_us": {}, "decode_us": {}}
    for label, snippet in IMPORT_SNIPPETS.items():
        results["imports_s"][label] = time_import(snippet, args.imports)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    started = time.perf_counter()
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    results["tensorflow_import_in_process_s"] = time.perf_counter() - started

    from clients import codec, wire

    batch = np.random.default_rng(0).integers(0, 256, size=BATCH_SHAPE, dtype=np.uint8)

    def ours_request() -> bytes:
        # What the gRPC client sends: the request serialized field by field.
        return wire.encode_predict_request("lenet", {"image": batch})

    def ours_request_cold() -> bytes:
        # The first request of a model/input/shape: nothing of its framing cached yet.
        wire._SPEC_CACHE.clear()
        wire._INPUT_HEAD_CACHE.clear()
        return wire.encode_predict_request("lenet", {"image": batch})

    def ours_message() -> bytes:
        return wire.build_predict_request("lenet", {"image": batch}).SerializeToString()

    def stock_request() -> bytes:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "lenet"
        request.model_spec.signature_name = "serving_default"
        request.inputs["image"].CopyFrom(tf.make_tensor_proto(batch))
        return request.SerializeToString()

    # The same bytes on the wire, built three ways.
    assert ours_request() == ours_request_cold() == ours_message() == stock_request()

    results["build_us"] = {
        "ours: encode_predict_request (serialized)": per_call_us(ours_request, args.repeat),
        "ours: encode_predict_request, first of its shape (cold cache)": per_call_us(
            ours_request_cold, args.repeat
        ),
        "ours: build_predict_request + serialize": per_call_us(ours_message, args.repeat),
        "stock: tf.make_tensor_proto + PredictRequest + serialize": per_call_us(
            stock_request, args.repeat
        ),
        "ours: ndarray_to_tensor_proto": per_call_us(
            lambda: codec.ndarray_to_tensor_proto(batch), args.repeat
        ),
        "stock: tf.make_tensor_proto": per_call_us(
            lambda: tf.make_tensor_proto(batch), args.repeat
        ),
        # The explicit form many client examples use.
        "stock: tf.make_tensor_proto(dtype=tf.uint8, shape=...)": per_call_us(
            lambda: tf.make_tensor_proto(batch, dtype=tf.uint8, shape=list(BATCH_SHAPE)),
            args.repeat,
        ),
    }
    probabilities = np.random.default_rng(1).random((64, 10), dtype=np.float32)
    ours_proto = codec.ndarray_to_tensor_proto(probabilities)
    stock_proto = tf.make_tensor_proto(probabilities)
    results["decode_us"] = {
        "ours: tensor_proto_to_ndarray": per_call_us(
            lambda: codec.tensor_proto_to_ndarray(ours_proto), args.repeat
        ),
        "stock: tf.make_ndarray": per_call_us(lambda: tf.make_ndarray(stock_proto), args.repeat),
    }
    build, decode = results["build_us"], results["decode_us"]
    results["ratios"] = {
        "request build, stock/ours": build[
            "stock: tf.make_tensor_proto + PredictRequest + serialize"
        ]
        / build["ours: encode_predict_request (serialized)"],
        "request build, tf.make_tensor_proto alone/ours": build["stock: tf.make_tensor_proto"]
        / build["ours: encode_predict_request (serialized)"],
        "request build, tf.make_tensor_proto(dtype, shape) alone/ours": build[
            "stock: tf.make_tensor_proto(dtype=tf.uint8, shape=...)"
        ]
        / build["ours: encode_predict_request (serialized)"],
        "tensor encode, stock/ours": build["stock: tf.make_tensor_proto"]
        / build["ours: ndarray_to_tensor_proto"],
        "tensor decode, stock/ours": decode["stock: tf.make_ndarray"]
        / decode["ours: tensor_proto_to_ndarray"],
        "import, stock/clients": results["imports_s"][
            "stock: from tensorflow_serving.apis import predict_pb2"
        ]
        / results["imports_s"]["import clients"],
    }
    results["batch_shape"] = list(BATCH_SHAPE)
    results["python"] = sys.version.split()[0]

    if args.json:
        print(json.dumps(results, indent=2))
        return results
    print(f"import time (median of {args.imports} fresh interpreters):")
    for label, seconds in results["imports_s"].items():
        print(f"  {seconds * 1000:9.1f} ms  {label}")
    print(f"Predict request for a {list(BATCH_SHAPE)} uint8 batch (best of {args.repeat}):")
    for label, micros in build.items():
        print(f"  {micros:9.2f} us  {label}")
    print("decode a [64, 10] float32 output:")
    for label, micros in decode.items():
        print(f"  {micros:9.2f} us  {label}")
    print("ratios (higher = ours faster):")
    for label, ratio in results["ratios"].items():
        print(f"  {ratio:9.1f} x   {label}")
    return results


if __name__ == "__main__":
    main()
