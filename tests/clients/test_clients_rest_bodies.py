"""REST bodies in the shapes TF Serving's REST API documents (row, columnar, b64, signature)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from clients.errors import InvalidInput
from clients.protocols import rest_predict_body, rest_predict_outputs


def b64(raw: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(raw).decode()}


def test_row_format_with_named_inputs() -> None:
    body = rest_predict_body(
        {
            "tag": np.array([b"foo", b"bar"], dtype=object),
            "signal": np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]]),
            "sensor": np.array([[[1, 2], [3, 4]], [[4, 5], [6, 8]]]),
        },
        "serving_default",
        "row",
    )
    assert body == {
        "signature_name": "serving_default",
        "instances": [
            {"tag": b64(b"foo"), "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
            {"tag": b64(b"bar"), "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]},
        ],
    }


def test_columnar_format_with_named_inputs() -> None:
    body = rest_predict_body(
        {"tag": np.array(["foo", "bar"]), "signal": np.array([[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]])},
        None,
        "columnar",
    )
    assert body == {
        "inputs": {"tag": [b64(b"foo"), b64(b"bar")], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]]}
    }


def test_single_unnamed_input_in_both_formats() -> None:
    images = np.array([b"image bytes"], dtype=object)
    assert rest_predict_body(images, None, "row") == {"instances": [{"b64": "aW1hZ2UgYnl0ZXM="}]}
    pixels = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    assert rest_predict_body(pixels, "serving_default", "columnar") == {
        "signature_name": "serving_default",
        "inputs": [[[[0], [1]], [[2], [3]]]],
    }


def test_row_format_needs_one_batch_dimension() -> None:
    with pytest.raises(InvalidInput):
        rest_predict_body({"a": np.zeros((2, 3)), "b": np.zeros((3, 3))}, None, "row")


def test_predict_replies_in_each_documented_shape() -> None:
    row_single = rest_predict_outputs({"predictions": [[0.1, 0.9], [0.8, 0.2]]})
    assert isinstance(row_single, np.ndarray) and row_single.shape == (2, 2)
    row_multi = rest_predict_outputs({"predictions": [{"scores": [0.9], "classes": [3]}] * 2})
    assert isinstance(row_multi, dict) and row_multi["classes"].tolist() == [[3], [3]]
    columnar = rest_predict_outputs({"outputs": {"scores": [[0.9]], "names": [b64(b"cat")]}})
    assert isinstance(columnar, dict) and columnar["names"][0] == b"cat"
    single = rest_predict_outputs({"outputs": [[0.25, 0.75]]})
    assert isinstance(single, np.ndarray) and single[0, 1] == 0.75
    row_b64 = rest_predict_outputs({"predictions": [b64(b"\x00\xff")]})
    assert isinstance(row_b64, np.ndarray) and row_b64[0] == b"\x00\xff"
