"""How long the gateway takes to decode a TF Serving ``:predict`` JSON body, both ways.

The common body (one numeric input as regular nested lists) goes through simdjson
(``serving/codecs/regular_json.py``); everything else through orjson and Python lists. This times
``serving.codecs.tfserving.decode_predict`` on the same bodies with the simdjson path on and off:
28x28x1 images, uint8 (pixel integers) and float32 (pixels / 255), 1 and 32 per request.

    python -m benchmarks.lab.rest_decode_speed [--repeat 7]
"""

from __future__ import annotations

import argparse
import functools
import timeit
from collections.abc import Callable

import numpy as np
import orjson

from serving.codecs import regular_json, tfserving
from serving.runtimes.base import TensorSpec


def best_us(call: Callable[[], object], repeat: int) -> float:
    """Best of ``repeat`` timings, each long enough (~0.2 s) to average out the clock."""
    timer = timeit.Timer(call)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="timings per case (best is shown)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("| images | dtype | body bytes | simdjson path us | general path us | speed-up |")
    print("|---:|---|---:|---:|---:|---:|")
    for count in (1, 32):
        pixels = rng.integers(0, 256, (count, 28, 28, 1))
        for dtype, values in ((np.uint8, pixels), (np.float32, pixels / 255)):
            spec = TensorSpec("image", np.dtype(dtype), (-1, 28, 28, 1))
            body = orjson.dumps({"instances": values.tolist()})
            expected = tfserving.decode_predict(body, [spec]).inputs["image"]
            assert regular_json.decode_single_tensor(body, spec) is not None, "fast path not taken"
            fast = best_us(functools.partial(tfserving.decode_predict, body, [spec]), args.repeat)
            original = regular_json.decode_single_tensor
            regular_json.decode_single_tensor = lambda body, spec: None  # type: ignore[assignment]
            try:
                general = tfserving.decode_predict(body, [spec]).inputs["image"]
                slow = best_us(
                    functools.partial(tfserving.decode_predict, body, [spec]), args.repeat
                )
            finally:
                regular_json.decode_single_tensor = original  # type: ignore[assignment]
            np.testing.assert_array_equal(expected, general)  # same answer both ways
            print(f"| {count} | {np.dtype(dtype).name} | {len(body):,} | {fast:.1f} | {slow:.1f} | "
                  f"{slow / fast:.1f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
