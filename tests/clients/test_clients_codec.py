"""The dtype table, the TensorProto codec, the V2 binary helpers and the status table."""

from __future__ import annotations

import json
import re
import struct
import tracemalloc

import numpy as np
import pytest

from clients import codec, v2, wire
from clients.errors import (
    EXCEPTION_FOR_STATUS,
    InternalError,
    InvalidInput,
    ModelNotFound,
    ServerBusy,
    Status,
    Unavailable,
    error_for_grpc,
    error_for_http,
)

ROUND_TRIP_DTYPES = [
    np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
    np.float16, np.float32, np.float64, np.bool_, np.complex64, np.complex128,
]  # fmt: skip


@pytest.mark.parametrize("dtype", ROUND_TRIP_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numeric_tensors_round_trip_as_tensor_content(dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    proto = codec.ndarray_to_tensor_proto(array)
    assert proto.tensor_content == array.tobytes()
    assert not proto.float_val and not proto.int_val  # no per-element lists
    assert [d.size for d in proto.tensor_shape.dim] == [2, 3, 4]
    decoded = codec.tensor_proto_to_ndarray(proto)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_decoding_tensor_content_does_not_copy_again() -> None:
    proto = codec.ndarray_to_tensor_proto(np.ones((64, 28, 28, 1), np.uint8))
    decoded = codec.tensor_proto_to_ndarray(proto)
    assert not decoded.flags.writeable and not decoded.flags.owndata  # a view on the bytes


def test_non_contiguous_and_big_endian_arrays_encode_as_their_values() -> None:
    base = np.arange(12, dtype=np.int32).reshape(3, 4)
    for array in (base.T, base.astype(">i4"), base[:, ::2]):
        decoded = codec.tensor_proto_to_ndarray(codec.ndarray_to_tensor_proto(array))
        np.testing.assert_array_equal(decoded, array)


def test_strings_travel_as_string_val_and_decode_to_bytes() -> None:
    proto = codec.ndarray_to_tensor_proto(np.array([["a", "bc"], ["é", ""]]))
    assert list(proto.string_val) == [b"a", b"bc", "é".encode(), b""]
    assert proto.dtype == wire.DataType.DT_STRING and not proto.tensor_content
    decoded = codec.tensor_proto_to_ndarray(proto)
    assert decoded.dtype == object and decoded.shape == (2, 2)
    assert decoded[1, 0] == "é".encode()


def test_typed_value_fields_decode_and_short_lists_fill() -> None:
    shape = wire.TensorShapeProto(
        dim=[wire.TensorShapeProto.Dim(size=2), wire.TensorShapeProto.Dim(size=2)]
    )
    cases = [
        (wire.TensorProto(dtype=wire.DataType.DT_FLOAT, tensor_shape=shape, float_val=[1, 2, 3, 4]), [[1, 2], [3, 4]]),
        (wire.TensorProto(dtype=wire.DataType.DT_INT64, tensor_shape=shape, int64_val=[7]), [[7, 7], [7, 7]]),
        (wire.TensorProto(dtype=wire.DataType.DT_UINT8, tensor_shape=shape, int_val=[1, 2]), [[1, 2], [2, 2]]),
        (wire.TensorProto(dtype=wire.DataType.DT_BOOL, tensor_shape=shape, bool_val=[True, False, True, True]), [[1, 0], [1, 1]]),
        (wire.TensorProto(dtype=wire.DataType.DT_HALF, tensor_shape=shape, half_val=[0x3C00]), [[1, 1], [1, 1]]),
        (wire.TensorProto(dtype=wire.DataType.DT_DOUBLE, tensor_shape=shape), [[0, 0], [0, 0]]),
    ]  # fmt: skip
    for proto, expected in cases:
        decoded = codec.tensor_proto_to_ndarray(proto)
        assert decoded.dtype == codec.numpy_dtype(proto.dtype)
        np.testing.assert_array_equal(decoded, np.array(expected))


def test_malformed_tensors_are_rejected() -> None:
    proto = codec.ndarray_to_tensor_proto(np.ones((2, 2), np.float32))
    proto.tensor_content = proto.tensor_content[:-1]
    with pytest.raises(ValueError, match="bytes"):
        codec.tensor_proto_to_ndarray(proto)
    with pytest.raises(TypeError):
        codec.tensor_proto_to_ndarray(wire.TensorProto(dtype=wire.DataType.DT_RESOURCE))
    with pytest.raises(TypeError):
        codec.ndarray_to_tensor_proto(np.array(["2026-11-26"], dtype="datetime64[D]"))


@pytest.mark.parametrize(
    ("dtype", "field", "values", "words"),
    [
        (wire.DataType.DT_UINT8, "int_val", [300], "DT_UINT8 takes [0, 255]"),
        (wire.DataType.DT_UINT8, "int_val", [-1], "DT_UINT8 takes [0, 255]"),
        (wire.DataType.DT_INT8, "int_val", [128], "DT_INT8 takes [-128, 127]"),
        (wire.DataType.DT_INT16, "int_val", [-40000], "DT_INT16 takes [-32768, 32767]"),
        (wire.DataType.DT_UINT16, "int_val", [70000], "DT_UINT16 takes [0, 65535]"),
        (wire.DataType.DT_HALF, "half_val", [70000], "DT_HALF takes [0, 65535]"),
        (wire.DataType.DT_UINT8, "float_val", [1.0], "not float_val"),
        (wire.DataType.DT_FLOAT, "int_val", [1], "not int_val"),
    ],
)
def test_typed_values_outside_their_dtype_are_rejected_not_wrapped(
    dtype: int, field: str, values: list[float], words: str
) -> None:
    """TensorFlow would read int_val 300 as DT_UINT8 44; we refuse it, as REST does."""
    proto = wire.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.dim.add(size=1)
    getattr(proto, field).extend(values)
    with pytest.raises(ValueError, match=re.escape(words)):
        codec.tensor_proto_to_ndarray(proto)


@pytest.mark.parametrize(
    ("dtype", "field"),
    [(wire.DataType.DT_UINT8, "int_val"), (wire.DataType.DT_FLOAT, "float_val"),
     (wire.DataType.DT_STRING, "string_val"), (wire.DataType.DT_COMPLEX64, "scomplex_val")],
)  # fmt: skip
def test_too_many_typed_values_are_refused_before_they_are_converted(
    dtype: int, field: str
) -> None:
    """A packed int_val costs one byte per zero on the wire; converting 2M of them first would
    cost 16 MB (int64) before the count refused them. Refused at the count, nothing allocated."""
    proto = wire.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    proto.tensor_shape.dim.add(size=784)
    values = [b""] if field == "string_val" else [0]
    getattr(proto, field).extend(values * 2_000_000)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="values for 784 elements"):
            codec.tensor_proto_to_ndarray(proto)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak} bytes allocated to refuse it"


def test_tensor_content_together_with_typed_values_is_rejected() -> None:
    proto = codec.ndarray_to_tensor_proto(np.zeros(2, np.uint8))
    proto.int_val.extend([1, 2])
    with pytest.raises(ValueError, match="both tensor_content and int_val"):
        codec.tensor_proto_to_ndarray(proto)


def test_the_dtype_table_maps_both_ways() -> None:
    for entry in codec.DTYPES:
        assert codec.numpy_dtype(entry.tf) == entry.numpy
        assert codec.tf_dtype(entry.numpy) == entry.tf
        assert codec.numpy_dtype_from_tf_name(entry.tf_name) == entry.numpy
        if entry.v2 is not None:
            assert codec.numpy_dtype_from_v2(entry.v2) == entry.numpy
            assert codec.v2_datatype(entry.numpy) == entry.v2
    assert codec.tf_dtype_name(np.float32) == "DT_FLOAT"
    assert codec.v2_datatype(np.dtype("U3")) == "BYTES"


def test_v2_binary_body_layout_follows_the_extension() -> None:
    image = np.arange(6, dtype=np.uint8).reshape(1, 2, 3)
    words = np.array([b"ab", b""], dtype=object)
    body, headers = v2.encode_tensors("inputs", {"image": image, "words": words})
    header_length = int(headers[v2.HEADER_LENGTH])
    header = json.loads(body[:header_length])
    assert header["inputs"] == [
        {
            "name": "image",
            "shape": [1, 2, 3],
            "datatype": "UINT8",
            "parameters": {"binary_data_size": 6},
        },
        {
            "name": "words",
            "shape": [2],
            "datatype": "BYTES",
            "parameters": {"binary_data_size": 10},
        },
    ]
    assert body[header_length:] == image.tobytes() + struct.pack("<I", 2) + b"ab" + struct.pack(
        "<I", 0
    )
    decoded, _ = v2.decode_tensors("inputs", body, header_length)
    np.testing.assert_array_equal(decoded["image"], image)
    assert list(decoded["words"]) == [b"ab", b""]


def test_v2_json_bodies_decode_with_nested_or_flat_data() -> None:
    body = json.dumps(
        {"outputs": [
            {"name": "p", "shape": [2, 2], "datatype": "FP32", "data": [[0.5, 0.5], [1, 0]]},
            {"name": "s", "shape": [1], "datatype": "BYTES", "data": ["hi"]},
        ]}
    ).encode()  # fmt: skip
    decoded, _ = v2.decode_tensors("outputs", body)
    assert decoded["p"].dtype == np.float32 and decoded["p"].shape == (2, 2)
    assert decoded["s"][0] == b"hi"
    encoded, headers = v2.encode_tensors("outputs", {"p": decoded["p"]}, binary=False)
    assert headers == {"Content-Type": "application/json"}
    assert json.loads(encoded)["outputs"][0]["data"] == [0.5, 0.5, 1.0, 0.0]
    with pytest.raises(ValueError):
        v2.decode_tensors("outputs", body[:10] + b"x", 5)


def test_status_table_matches_tf_serving_http_mapping() -> None:
    expected = {
        Status.INVALID_ARGUMENT: (400, 3), Status.NOT_FOUND: (404, 5),
        Status.RESOURCE_EXHAUSTED: (429, 8), Status.UNAVAILABLE: (503, 14),
        Status.DEADLINE_EXCEEDED: (504, 4), Status.UNAUTHENTICATED: (401, 16),
        Status.INTERNAL: (500, 13), Status.UNIMPLEMENTED: (501, 12),
    }  # fmt: skip
    for status, (http_status, grpc_code) in expected.items():
        assert (status.http_status, status.grpc_code) == (http_status, grpc_code)
        assert Status.from_http_status(http_status) is status
        assert Status.from_grpc_code(grpc_code) is status
    assert Status.from_http_status(502) is Status.UNAVAILABLE
    assert {s for s in Status if s.retryable} == {Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED}
    assert set(EXCEPTION_FOR_STATUS) == set(Status) - {Status.OK}


def test_http_and_grpc_failures_decode_to_the_same_exception() -> None:
    pairs = [
        (error_for_http(404, '{"error": "Servable not found"}'), error_for_grpc(5, "Servable not found"), ModelNotFound),
        (error_for_http(400, '{"detail": "bad"}'), error_for_grpc(3, "bad"), InvalidInput),
        (error_for_http(429, "busy"), error_for_grpc(8, "busy"), ServerBusy),
        (error_for_http(503, ""), error_for_grpc(14, None), Unavailable),
        (error_for_http(500, "<html>"), error_for_grpc(13, "<html>"), InternalError),
    ]  # fmt: skip
    for over_http, over_grpc, exception in pairs:
        assert type(over_http) is type(over_grpc) is exception
        assert over_http.status is over_grpc.status
    assert error_for_http(404, '{"error": "Servable not found"}').message == "Servable not found"


@pytest.mark.parametrize(
    "request_args",
    [
        {
            "model": "lenet",
            "inputs": {"image": np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28, 1)},
        },
        {
            "model": "m",
            "inputs": {
                "empty": np.zeros((0, 3), np.float32),
                "words": np.array([b"x", b"", "é"], dtype=object),
                "transposed": np.arange(6, dtype=">i4").reshape(2, 3).T,
                "zero_dim": np.zeros((2, 0), np.int64),
            },
            "version": 3,
            "output_filter": ["p", "q"],
        },
        {
            "model": "m",
            "inputs": {"scalar": np.array(-1, np.int64)},
            "label": "stable",
            "signature": None,
        },
    ],
    ids=["image", "mixed", "scalar"],
)
def test_hand_serialized_predict_request_parses_to_the_protobuf_message(request_args: dict) -> None:
    raw = wire.encode_predict_request(**request_args)
    assert wire.PredictRequest.FromString(raw) == wire.build_predict_request(**request_args)


def test_cached_request_framing_stays_correct_for_every_layout_of_one_shape() -> None:
    # The framing of an input is cached by name, dtype and shape after its first request; later
    # requests with other layouts, byte orders or contents under that key must still be right.
    batch = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    same_key_arrays = [
        batch,
        batch + 1,  # new contents, same framing
        np.asfortranarray(batch),  # same shape and dtype, not C-contiguous
        batch[::-1],  # negative strides
        batch.astype(">f4"),  # equal shape, other byte order
        batch.astype(np.float64),  # other dtype
        batch.reshape(5, 4, 3),  # other shape, same byte count
    ]
    for _ in range(2):  # the second round runs with every framing already cached
        for array in same_key_arrays:
            raw = wire.encode_predict_request("cached", {"x": array}, version=2)
            parsed = wire.PredictRequest.FromString(raw)
            assert parsed == wire.build_predict_request("cached", {"x": array}, version=2)
            np.testing.assert_array_equal(codec.tensor_proto_to_ndarray(parsed.inputs["x"]), array)


@pytest.mark.parametrize(
    "value", [1, 127, 128, 16383, 16384, 2**21 - 1, 2**21, 2**40, -1, -(2**63)]
)
def test_hand_written_varints_match_protobuf(value: int) -> None:
    from google.protobuf.wrappers_pb2 import Int64Value

    assert Int64Value(value=value).SerializeToString() == b"\x08" + wire._varint(value)


def test_bytes_elements_are_framed_exactly() -> None:
    """One framing of BYTES tensors for client and gateway: whole elements, exactly as many as
    the shape needs, or ValueError."""
    array = np.array([b"ab", b"", b"cde"], dtype=object)
    raw = v2.tensor_to_bytes(array)
    assert raw == b"\x02\x00\x00\x00ab\x00\x00\x00\x00\x03\x00\x00\x00cde"
    assert v2.bytes_elements(raw, 3).tolist() == [b"ab", b"", b"cde"]
    for broken, count, words in (
        (raw[:-1], 3, "BYTES element 2 is truncated"),
        (raw, 2, "BYTES data holds 2 elements in 17 bytes, shape needs 2"),
        (raw + b"\x00", 3, "holds 3 elements in 18 bytes"),
    ):
        with pytest.raises(ValueError, match=re.escape(words)):
            v2.bytes_elements(broken, count)
