"""TF Serving JSON decoding: the fast path for regular nested lists against numpy's exact path."""

from __future__ import annotations

import functools
import gc
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
import pytest

from serving.codecs import regular_json, tfserving
from serving.errors import InvalidArgument
from serving.runtimes.base import TensorSpec

REGULAR = [[[[1], [2], [3]], [[4], [5], [6]]]]  # one instance of shape [2, 3, 1]
BATCHES: dict[str, Any] = {
    "one instance": REGULAR,
    "three instances": REGULAR * 3,
    "float": [[[[1.5], [2], [3]], [[4], [5], [6]]]],
    "bools and ints": [[[[True], [False], [True]], [[1], [0], [1]]]],
    "negative": [[[[-1], [2], [3]], [[4], [5], [6]]]],
    "out of uint8 range": [[[[300], [2], [3]], [[4], [5], [6]]]],
    "ragged, same count": [[[[1], [2]], [[3], [4], [5], [6]]]],
    "ragged, more numbers": [[[[1], [2], [3]], [[4], [5], [6], [7]]]],
    "strings": [[[["a"], ["b"], ["c"]], [["d"], ["e"], ["f"]]]],
    "two-letter strings": [[[["ab"], "cd", "ef"], [[4], [5], [6]]]],
    "object at a leaf": [[[[{"x": 1}], [2], [3]], [[4], [5], [6]]]],
    "null at a leaf": [[[[None], [2], [3]], [[4], [5], [6]]]],
    "list at a leaf": [[[[[1]], [2], [3]], [[4], [5], [6]]]],
    "number where a list belongs": [[[1, [2], [3]], [[4], [5], [6]]]],
    "number as an instance": [REGULAR[0], 7],
    "object as an instance": [{"a": [1, 2, 3], "b": [4, 5, 6]}],
    "wrong instance shape": [[[1, 2, 3], [4, 5, 6]]],
}


def _decode(value: Any, spec: TensorSpec) -> tuple[str, Any]:
    try:
        return "ok", tfserving.to_array(value, spec, batch=True)
    except InvalidArgument as exc:
        return "error", exc.message


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.float32, np.bool_])
@pytest.mark.parametrize("name", list(BATCHES))
def test_regular_batch_fast_path_answers_exactly_like_numpy(
    name: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = TensorSpec("x", np.dtype(dtype), (-1, 2, 3, 1))
    no_fast_path = functools.partial(monkeypatch.setattr, tfserving, "_regular_batch", _never)
    _same_both_ways(_decode, BATCHES[name], spec, no_fast_path)


def _never(*args: Any) -> None:
    """Stands in for a fast path that never applies."""
    return None


def _same_both_ways(
    decode: Callable[[Any, TensorSpec], tuple[str, Any]], value: Any, spec: TensorSpec,
    disable_fast_path: Callable[[], None],
) -> None:  # fmt: skip
    """``decode`` gives the same outcome (answer or error message) before and after the patch."""
    fast = decode(value, spec)
    disable_fast_path()
    general = decode(value, spec)
    assert fast[0] == general[0], (fast, general)
    _assert_same(fast[1], general[1])


def _assert_same(fast: Any, general: Any) -> None:
    """Equal, arrays down to dtype and shape, through dicts and tuples."""
    if isinstance(fast, np.ndarray):
        assert fast.dtype == general.dtype and fast.shape == general.shape
        np.testing.assert_array_equal(fast, general)
    elif isinstance(fast, dict):
        assert fast.keys() == general.keys()
        for key in fast:
            _assert_same(fast[key], general[key])
    elif isinstance(fast, tuple):
        assert len(fast) == len(general)
        for one, other in zip(fast, general, strict=True):
            _assert_same(one, other)
    else:
        assert fast == general


def test_the_fast_path_is_taken_for_a_regular_batch() -> None:
    assert tfserving._regular_batch(REGULAR * 2, (2, 3, 1)).shape == (2, 2, 3, 1)
    assert tfserving._regular_batch(REGULAR, (-1, 3, 1)) is None  # a free dimension: numpy decides


def test_json_decoding_leaves_the_garbage_collector_as_it_found_it() -> None:
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 2, 3, 1))
    assert gc.isenabled()
    tfserving.decode_predict(b'{"instances": [[[[1], [2], [3]], [[4], [5], [6]]]]}', [spec])
    assert gc.isenabled()
    with pytest.raises(InvalidArgument):
        tfserving.decode_predict(b'{"instances": ', [spec])
    assert gc.isenabled()
    gc.disable()
    try:
        tfserving.decode_predict(b'{"instances": [[[[1], [2], [3]], [[4], [5], [6]]]]}', [spec])
        assert not gc.isenabled()  # a caller's own pause is kept
    finally:
        gc.enable()


# Whole request bodies, as bytes: whitespace, key order and escapes matter to the simdjson path.
IMAGE = b"[[[1], [2], [3]], [[4], [5], [6]]]"
BODIES: dict[str, bytes] = {
    "rows": b'{"instances": [' + IMAGE + b"]}",
    "rows, minified": b'{"instances":[[[[1],[2],[3]],[[4],[5],[6]]]]}',
    "rows, spaced and wrapped": b'\n { "instances" :\t[ [ [[1] ,[2],[3]],\r\n[[4],[5],[6] ] ] ] }\n',
    "rows, three instances": b'{"instances": [' + b", ".join([IMAGE] * 3) + b"]}",
    "rows, escaped key": b'{"inst\\u0061nces": [' + IMAGE + b"]}",
    "rows + signature_name": b'{"signature_name": "serving_default", "instances": ['
    + IMAGE
    + b"]}",
    "rows + unknown signature": b'{"instances": [' + IMAGE + b'], "signature_name": "other"}',
    "rows + signature_name not a string": b'{"instances": [' + IMAGE + b'], "signature_name": 3}',
    "rows + an unknown key": b'{"instances": [' + IMAGE + b'], "extra": 1}',
    "rows, duplicate key": b'{"instances": [[[[9]]]], "instances": [' + IMAGE + b"]}",
    "rows and columns": b'{"instances": [' + IMAGE + b'], "inputs": [' + IMAGE + b"]}",
    "columns, list": b'{"inputs": [' + IMAGE + b"]}",
    "columns, by name": b'{"inputs": {"x": [' + IMAGE + b"]}}",
    "columns, wrong name": b'{"inputs": {"y": [' + IMAGE + b"]}}",
    "columns, two names": b'{"inputs": {"x": [' + IMAGE + b'], "y": 1}}',
    "floats": b'{"instances": [[[[1.5], [2e0], [-3E-1]], [[4], [5], [-0]]]]}',
    "a float among ints": b'{"instances": [[[[1.0], [2], [3]], [[4], [5], [6]]]]}',
    "negative": b'{"instances": [[[[-1], [2], [3]], [[4], [5], [6]]]]}',
    "out of uint8 range": b'{"instances": [[[[300], [2], [3]], [[4], [5], [6]]]]}',
    "beyond int64": b'{"instances": [[[[18446744073709551615], [2], [3]], [[4], [5], [6]]]]}',
    "beyond float64's exact integers": b'{"instances": [[[[9007199254740993], [2], [3]], [[4], [5], [6]]]]}',
    "bools": b'{"instances": [[[[true], [false], [true]], [[1], [0], [1]]]]}',
    "null": b'{"instances": [[[[null], [2], [3]], [[4], [5], [6]]]]}',
    "digit strings": b'{"instances": [[[["1"], ["2"], ["3"]], [["4"], ["5"], ["6"]]]]}',
    "ragged, same count": b'{"instances": [[[[1], [2]], [[3], [4], [5], [6]]]]}',
    "ragged, first path regular": b'{"instances": [[[[1], [2], [3]], [[4], [5, 6]]]]}',
    "an empty leaf list": b'{"instances": [[[[1], [2], [3]], [[4], [], [5, 6]]]]}',
    "an empty leaf, same skeleton": b'{"instances": [[[[1], [2], [3]], [[4], [5], []]]]}',
    "empty instances": b'{"instances": []}',
    "wrong instance shape": b'{"instances": [[[1, 2, 3], [4, 5, 6]]]}',
    "b64": b'{"instances": [{"b64": "AQIDBAUG"}]}',
    "named instance": b'{"instances": [{"x": ' + IMAGE + b"}]}",
    "a number": b'{"instances": 7}',
    "a list at the top": b"[" + IMAGE + b"]",
    "truncated": b'{"instances": [' + IMAGE,
    "trailing comma": b'{"instances": [[[[1], [2], [3]], [[4], [5], [6],]]]}',
    "leading zero": b'{"instances": [[[[01], [2], [3]], [[4], [5], [6]]]]}',
    "NaN": b'{"instances": [[[[NaN], [2], [3]], [[4], [5], [6]]]]}',
    "empty body": b"",
}


def _decode_body(body: bytes, spec: TensorSpec) -> tuple[str, Any]:
    try:
        decoded = tfserving.decode_predict(body, [spec])
    except InvalidArgument as exc:
        return "error", exc.message
    return "ok", (decoded.inputs, decoded.row_format, decoded.signature_name)


# Huge integers cast to float16 overflow to inf on both paths (numpy warns; the answers agree).
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64, np.float16, np.float32, np.bool_])
@pytest.mark.parametrize("name", list(BODIES))
def test_simdjson_path_answers_exactly_like_the_general_path(
    name: str, dtype: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = TensorSpec("x", np.dtype(dtype), (-1, 2, 3, 1))
    no_fast_path = functools.partial(
        monkeypatch.setattr, regular_json, "decode_single_tensor", _never
    )
    _same_both_ways(_decode_body, BODIES[name], spec, no_fast_path)


@pytest.mark.parametrize(
    "name",
    ["rows", "rows, minified", "rows, spaced and wrapped", "rows, three instances",
     "rows, escaped key", "rows + signature_name", "columns, list", "columns, by name",
     "negative", "out of uint8 range"],
)  # fmt: skip
def test_simdjson_path_takes_the_regular_bodies(name: str) -> None:
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 2, 3, 1))
    decoded = regular_json.decode_single_tensor(BODIES[name], spec)
    assert decoded is not None
    array, row_format, _ = decoded
    assert array.dtype == np.int64 and array.shape[1:] == (2, 3, 1)
    assert row_format == (not name.startswith("columns"))


@pytest.mark.parametrize(
    "name",
    ["rows, duplicate key", "ragged, same count", "ragged, first path regular",
     "an empty leaf, same skeleton", "a float among ints", "bools", "beyond int64", "truncated"],
)  # fmt: skip
def test_simdjson_path_leaves_the_rest_to_the_general_path(name: str) -> None:
    spec = TensorSpec("x", np.dtype(np.int64), (-1, 2, 3, 1))
    assert regular_json.decode_single_tensor(BODIES[name], spec) is None


def test_simdjson_parser_survives_a_document_kept_alive() -> None:
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 2, 3, 1))
    kept = regular_json._parse(BODIES["rows"])  # a proxy into the parser's document stays alive
    assert regular_json.decode_single_tensor(BODIES["rows"], spec) is not None
    assert kept is not None


def test_big_bodies_do_not_grow_the_shared_simdjson_parser() -> None:
    small = BODIES["rows"]
    big = b'{"instances": [' + b", ".join([IMAGE] * 40_000) + b"]}"  # over 1 MiB
    assert len(small) <= regular_json.SHARED_PARSER_MAX_BYTES < len(big)
    shared = regular_json._parser_for(small)
    assert regular_json._parser_for(small) is shared
    assert regular_json._parser_for(big) is not shared  # a parser of its own, freed after
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 2, 3, 1))
    decoded = regular_json.decode_single_tensor(big, spec)
    assert decoded is not None and decoded[0].shape == (40_000, 2, 3, 1)
    assert regular_json._parser_for(small) is shared


def test_a_small_body_claiming_a_huge_shape_is_not_expanded() -> None:
    # First element of each level 1,000 long, every other element empty: 9 KB of body that would
    # claim 10**9 numbers. The skeleton (a gigabyte) must never be built.
    first = b"[" + b",".join([b"[" + b",".join([b"1"] * 1000) + b"]"] + [b"[]"] * 999) + b"]"
    body = b'{"instances": [' + b",".join([first] + [b"[]"] * 999) + b"]}"
    assert len(body) < 20_000
    assert regular_json.skeleton_length([1000, 1000, 1000]) > 10**9
    spec = TensorSpec("x", np.dtype(np.uint8), (-1, 1000, 1000))
    regular_json.element_skeleton.cache_clear()
    assert regular_json.decode_single_tensor(body, spec) is None
    assert regular_json.element_skeleton.cache_info().currsize == 0  # nothing built
    with pytest.raises(InvalidArgument, match="ragged"):
        tfserving.decode_predict(body, [spec])


@pytest.mark.parametrize("shape", [[1], [3], [2, 3], [2, 3, 1], [4, 1, 5, 2]])
def test_skeleton_length_matches_the_skeleton(shape: list[int]) -> None:
    assert regular_json.skeleton_length(shape) == len(regular_json._skeleton(shape))


# --- one pixel budget across the images of a request --------------------------------------------
def _png_b64(side: int) -> dict[str, str]:
    import base64
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (side, side), 90).save(out, format="PNG")
    return {"b64": base64.b64encode(out.getvalue()).decode()}


@pytest.mark.parametrize("form", ["rows", "named-rows", "columns", "named-columns"])
def test_the_images_of_one_request_share_one_pixel_budget(form: str) -> None:
    import orjson

    from serving.errors import PayloadTooLarge
    from serving.validation import InputLimits

    spec = TensorSpec("image", np.dtype(np.uint8), (-1, 28, 28, 1))
    limits = InputLimits(max_image_pixels=1000, max_request_image_pixels=3000)

    def body(count: int) -> bytes:
        values = [_png_b64(31)] * count  # 961 pixels each
        payload = {
            "rows": {"instances": values},
            "named-rows": {"instances": [{"image": value} for value in values]},
            "columns": {"inputs": values},
            "named-columns": {"inputs": {"image": values}},
        }[form]
        return orjson.dumps(payload)

    decoded = tfserving.decode_general_predict(body(3), [spec], limits)  # 2,883 pixels
    assert decoded.inputs["image"].shape == (3, 28, 28, 1)
    with pytest.raises(PayloadTooLarge, match="declare more than 3000 pixels together"):
        tfserving.decode_general_predict(body(4), [spec], limits)


def test_the_request_pixel_budget_is_derived_from_the_per_image_limit() -> None:
    from serving.images import DERIVED_REQUEST_IMAGES, ImageSpec, request_pixel_limit

    spec = ImageSpec(28, 28, 1)
    assert request_pixel_limit(spec, 1000, 0) == DERIVED_REQUEST_IMAGES * 1000
    assert request_pixel_limit(spec, 0, 0) == DERIVED_REQUEST_IMAGES * 2048 * 2048
    assert request_pixel_limit(spec, 1000, 5000) == 5000


# --- uint64: exact above 2**63, and never wrapped from a negative --------------------------------
UINT64 = TensorSpec("x", np.dtype(np.uint64), (-1, 2))
# (case, JSON values, decoded values or the (TF Serving JSON, V2 JSON) refusals)
UINT64_JSON: list[tuple[str, bytes, Any]] = [
    ("max", b"[[18446744073709551615, 0]]", [[2**64 - 1, 0]]),
    ("mixed-around-2**63", b"[[1, 9223372036854775808]]", [[1, 2**63]]),
    ("negative", b"[[-1, 0]]", ("expects uint64 in [0, 18446744073709551615]", "out of range")),
    ("negative-and-big", b"[[-1, 9223372036854775808]]", ("got float values", "holds floats")),
    ("fraction-and-big", b"[[1.5, 9223372036854775808]]", ("got float values", "holds floats")),
    ("2**64", b"[[18446744073709551616, 0]]", ("integers beyond 64 bits", "holds floats")),
]


@pytest.mark.parametrize(("case", "data", "expected"), UINT64_JSON, ids=[c[0] for c in UINT64_JSON])
def test_uint64_values_are_exact_or_refused_on_both_json_wires(
    case: str, data: bytes, expected: Any
) -> None:
    from serving.codecs import v2

    tf_body = b'{"instances": ' + data + b"}"
    v2_body = (
        b'{"inputs": [{"name": "x", "datatype": "UINT64", "shape": [1, 2], "data": ' + data + b"}]}"
    )
    decoders = [
        lambda: tfserving.decode_predict(tf_body, [UINT64]).inputs["x"],
        lambda: v2.decode_infer(v2_body, specs=[UINT64]).inputs["x"],
    ]
    for wire, decode in enumerate(decoders):
        if isinstance(expected, tuple):
            with pytest.raises(InvalidArgument, match=re.escape(expected[wire])):
                decode()
        else:
            array = decode()
            assert array.dtype == np.uint64
            assert array.tolist() == expected


FLOAT_JSON = [
    (
        "float32 overflow",
        "float32",
        "FP32",
        b"[[1e300, 1]]",
        "expects float32 numbers within +-3.403e+38",
    ),
    ("float32 negative", "float32", "FP32", b"[[-3.5e38, 1]]", "expects float32 numbers within"),
    (
        "float16 overflow",
        "float16",
        "FP16",
        b"[[70000, 1]]",
        "expects float16 numbers within +-6.55e+04",
    ),
    ("float32 largest", "float32", "FP32", b"[[3.4e38, -3.4e38]]", None),
    ("float32 underflow is zero", "float32", "FP32", b"[[1e-300, 1]]", None),
    ("float64 keeps 1e300", "float64", "FP64", b"[[1e300, 1]]", None),
]


@pytest.mark.parametrize(
    ("case", "dtype", "datatype", "data", "refusal"), FLOAT_JSON, ids=[c[0] for c in FLOAT_JSON]
)
def test_numbers_beyond_a_float_type_are_refused_not_made_infinite(
    case: str, dtype: str, datatype: str, data: bytes, refusal: str | None
) -> None:
    from serving.codecs import v2

    spec = TensorSpec("x", np.dtype(dtype), (-1, 2))
    tf_bodies = [
        b'{"instances": ' + data + b"}",
        b'{"inputs": {"x": ' + data + b'}, "signature_name": "serving_default"}',
    ]
    v2_body = (
        b'{"inputs": [{"name": "x", "datatype": "'
        + datatype.encode()
        + b'", "shape": [1, 2], "data": '
        + data[1:-1]
        + b"}]}"
    )
    decoders = [lambda b=b: tfserving.decode_predict(b, [spec]).inputs["x"] for b in tf_bodies]
    decoders.append(lambda: v2.decode_infer(v2_body, specs=[spec]).inputs["x"])
    for decode in decoders:
        if refusal is not None:
            with pytest.raises(InvalidArgument, match=re.escape(refusal)):
                decode()
        else:
            array, expected = decode(), np.array(orjson.loads(data), dtype=dtype)
            assert array.dtype == np.dtype(dtype) and np.isfinite(array).all()
            np.testing.assert_array_equal(array, expected)
