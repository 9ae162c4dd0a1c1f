"""numpy <-> TensorProto codec, built on one dtype table.

Public API:

- ``DtypeEntry``: one row of the table (numpy dtype, TensorFlow ``DataType`` number and name, the
  typed ``*_val`` field of ``TensorProto``, the KServe V2 datatype name).
- ``DTYPES``: the table. Every other mapping here is derived from it.
- ``tf_dtype(np_dtype) -> int`` / ``numpy_dtype(tf_dtype: int) -> np.dtype``
- ``tf_dtype_name(np_dtype) -> "DT_FLOAT"`` / ``numpy_dtype_from_tf_name("DT_FLOAT") -> np.dtype``
- ``v2_datatype(np_dtype) -> "FP32"`` / ``numpy_dtype_from_v2("FP32") -> np.dtype``
- ``ndarray_to_tensor_proto(array) -> TensorProto``: numeric tensors as ``tensor_content``
  (little-endian bytes, one copy), strings/bytes as ``string_val``.
- ``tensor_proto_to_ndarray(proto) -> np.ndarray``: reads ``tensor_content`` without a further copy
  (the array is read-only) and also the typed ``*_val`` fields other clients send (a short list is
  padded with its last value, as TensorFlow does). String tensors decode to object arrays of bytes,
  as ``tf.make_ndarray`` does. Stricter than TensorFlow: typed values outside the dtype's range or
  only in another dtype's field, or beside ``tensor_content``, are a ``ValueError``.
- ``as_ndarray(value)``: coerce lists, scalars, str and bytes into an ndarray (str -> bytes).
- ``TensorSpec``: one tensor of a signature (name, numpy dtype, shape with -1 for any size), the
  one definition the client's metadata and the gateway's models share.

String tensors are numpy object arrays of ``bytes``; ``str`` elements and ``U``/``S`` arrays are
accepted on the way in (encoded as UTF-8).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from clients.proto.tensor_pb2 import DataType, TensorProto, TensorShapeProto


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of one input or output (-1 = any size). A dtype this table
    does not know (a server may report one) is ``object``."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    def describe_shape(self) -> str:
        """Shape as ``[-1, 28, 28, 1]`` for messages."""
        return "[" + ", ".join(str(dim) for dim in self.shape) + "]"


@dataclass(frozen=True)
class DtypeEntry:
    """One dtype known to both wires: numpy, TensorFlow (number, name, value field), KServe V2."""

    numpy: np.dtype[Any]
    tf: DataType
    tf_name: str
    val_field: str
    v2: str | None


def _entry(np_type: Any, tf_name: str, val_field: str, v2: str | None) -> DtypeEntry:
    tf = cast(DataType, DataType.Value(tf_name))  # stubs type Value() as a plain int
    return DtypeEntry(np.dtype(np_type), tf, tf_name, val_field, v2)


# The one table. Strings are numpy object arrays (of bytes) on our side.
DTYPES: tuple[DtypeEntry, ...] = (
    _entry(np.float32, "DT_FLOAT", "float_val", "FP32"),
    _entry(np.float64, "DT_DOUBLE", "double_val", "FP64"),
    _entry(np.float16, "DT_HALF", "half_val", "FP16"),
    _entry(np.int8, "DT_INT8", "int_val", "INT8"),
    _entry(np.int16, "DT_INT16", "int_val", "INT16"),
    _entry(np.int32, "DT_INT32", "int_val", "INT32"),
    _entry(np.int64, "DT_INT64", "int64_val", "INT64"),
    _entry(np.uint8, "DT_UINT8", "int_val", "UINT8"),
    _entry(np.uint16, "DT_UINT16", "int_val", "UINT16"),
    _entry(np.uint32, "DT_UINT32", "uint32_val", "UINT32"),
    _entry(np.uint64, "DT_UINT64", "uint64_val", "UINT64"),
    _entry(np.bool_, "DT_BOOL", "bool_val", "BOOL"),
    _entry(np.complex64, "DT_COMPLEX64", "scomplex_val", None),
    _entry(np.complex128, "DT_COMPLEX128", "dcomplex_val", None),
    _entry(np.object_, "DT_STRING", "string_val", "BYTES"),
)

_BY_NUMPY: dict[np.dtype[Any], DtypeEntry] = {e.numpy: e for e in DTYPES}
_BY_TF: dict[int, DtypeEntry] = {e.tf: e for e in DTYPES}
_BY_TF_NAME: dict[str, DtypeEntry] = {e.tf_name: e for e in DTYPES}
_BY_V2: dict[str, DtypeEntry] = {e.v2: e for e in DTYPES if e.v2 is not None}
_STRING = _BY_TF[DataType.DT_STRING]


def _entry_for_numpy(dtype: np.dtype[Any]) -> DtypeEntry:
    if dtype.kind in "OSU":
        return _STRING
    try:
        return _BY_NUMPY[dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise TypeError(f"unsupported dtype {dtype}") from None


def tf_dtype(np_dtype: Any) -> int:
    """TensorFlow ``DataType`` number for a numpy dtype (object/str/bytes -> DT_STRING)."""
    return _entry_for_numpy(np.dtype(np_dtype)).tf


def tf_dtype_name(np_dtype: Any) -> str:
    """TensorFlow ``DataType`` name (``"DT_FLOAT"``) for a numpy dtype."""
    return _entry_for_numpy(np.dtype(np_dtype)).tf_name


def numpy_dtype(tf_type: int) -> np.dtype[Any]:
    """numpy dtype for a TensorFlow ``DataType`` number."""
    try:
        return _BY_TF[tf_type].numpy
    except KeyError:
        raise TypeError(f"unsupported TensorFlow dtype {tf_type}") from None


def numpy_dtype_from_tf_name(name: str) -> np.dtype[Any]:
    """numpy dtype for a TensorFlow ``DataType`` name such as ``"DT_UINT8"``."""
    try:
        return _BY_TF_NAME[name].numpy
    except KeyError:
        raise TypeError(f"unsupported TensorFlow dtype {name!r}") from None


def v2_datatype(np_dtype: Any) -> str:
    """KServe V2 datatype name (``"FP32"``, ``"BYTES"``) for a numpy dtype."""
    entry = _entry_for_numpy(np.dtype(np_dtype))
    if entry.v2 is None:
        raise TypeError(f"dtype {entry.numpy} has no KServe V2 datatype")
    return entry.v2


def numpy_dtype_from_v2(datatype: str) -> np.dtype[Any]:
    """numpy dtype for a KServe V2 datatype name."""
    try:
        return _BY_V2[datatype.upper()].numpy
    except KeyError:
        raise TypeError(f"unsupported KServe V2 datatype {datatype!r}") from None


def _to_bytes(element: Any) -> bytes:
    if isinstance(element, bytes):
        return element
    if isinstance(element, str):
        return element.encode("utf-8")
    if isinstance(element, (bytearray, memoryview)):
        return bytes(element)
    raise TypeError(f"string tensor element must be bytes or str, not {type(element).__name__}")


def as_ndarray(value: Any) -> np.ndarray[Any, Any]:
    """An ndarray for ``value``; str elements become bytes in an object array."""
    if isinstance(value, np.ndarray):
        array = value
    elif isinstance(value, (bytes, str)):
        array = np.array(_to_bytes(value), dtype=object)
    else:
        array = np.asarray(value)
    if array.dtype.kind in "SU" or (
        array.dtype.kind == "O" and array.size and not all(isinstance(x, bytes) for x in array.flat)
    ):
        flat = [_to_bytes(x) for x in array.flat]
        converted = np.empty(len(flat), dtype=object)
        converted[:] = flat
        array = converted.reshape(array.shape)
    return array


def ndarray_to_tensor_proto(array: Any) -> TensorProto:
    """Encode an array (or anything ``np.asarray`` accepts) as a ``TensorProto``."""
    array = as_ndarray(array)
    entry = _entry_for_numpy(array.dtype)
    shape = TensorShapeProto(dim=[TensorShapeProto.Dim(size=size) for size in array.shape])
    if entry is _STRING:
        return TensorProto(dtype=entry.tf, tensor_shape=shape, string_val=list(array.flat))
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    # tobytes() is row-major whatever the array's layout: the one copy protobuf needs.
    return TensorProto(dtype=entry.tf, tensor_shape=shape, tensor_content=array.tobytes())


#: Typed value fields wider than their dtype: (field's numpy type, the dtype's value range).
#: TensorFlow truncates such values silently (int_val 300 as DT_UINT8 reads 44); we refuse them.
_NARROW_RANGES: dict[int, tuple[int, int]] = {
    DataType.DT_INT8: (-(2**7), 2**7 - 1),
    DataType.DT_INT16: (-(2**15), 2**15 - 1),
    DataType.DT_UINT8: (0, 2**8 - 1),
    DataType.DT_UINT16: (0, 2**16 - 1),
    DataType.DT_HALF: (0, 2**16 - 1),  # half_val holds the 16-bit patterns in an int32
}


def _typed_values(proto: TensorProto, entry: DtypeEntry, count: int) -> np.ndarray[Any, Any]:
    values: Any = getattr(proto, entry.val_field)
    # Counted before anything is converted: a message of a few bytes per value must not cost
    # eight bytes or more per value (or a Python object each) before it is refused.
    per_element = 2 if entry.tf in (DataType.DT_COMPLEX64, DataType.DT_COMPLEX128) else 1
    if len(values) > count * per_element:
        raise ValueError(f"tensor has {len(values) // per_element} values for {count} elements")
    narrow = _NARROW_RANGES.get(entry.tf)
    if narrow is not None and len(values):
        wide = np.asarray(values, dtype=np.int64)
        low, high = narrow
        if wide.min() < low or wide.max() > high:
            raise ValueError(
                f"{entry.val_field} holds values in [{wide.min()}, {wide.max()}]; "
                f"{entry.tf_name} takes [{low}, {high}]"
            )
        values = wide
    if entry.tf == DataType.DT_HALF:
        flat = np.asarray(values, dtype=np.uint16).view(np.float16)
    elif entry.tf in (DataType.DT_COMPLEX64, DataType.DT_COMPLEX128):
        real = np.asarray(values, dtype=np.float32 if entry.tf == DataType.DT_COMPLEX64 else None)
        flat = (real[0::2] + 1j * real[1::2]).astype(entry.numpy)
    elif entry is _STRING:
        flat = np.empty(len(values), dtype=object)
        flat[:] = list(values)
    else:
        flat = np.asarray(values, dtype=entry.numpy)
    if len(flat) == count:
        return flat
    if len(flat) == 0:
        return np.zeros(count, dtype=entry.numpy) if entry is not _STRING else np.full(count, b"")
    # TensorFlow pads a short value list with its last element (e.g. a single fill value).
    return np.concatenate([flat, np.repeat(flat[-1:], count - len(flat))])


def tensor_proto_to_ndarray(proto: TensorProto) -> np.ndarray[Any, Any]:
    """Decode a ``TensorProto`` (``tensor_content`` or typed value fields) into an ndarray.

    Strict where TensorFlow is lenient: typed values in another dtype's field (where they would
    read as zeros), ``tensor_content`` together with the dtype's own typed values, and typed
    values outside the dtype's range are ``ValueError``.
    A tensor with fewer values than elements is padded with its last value (none: zeros), so
    a caller that does not trust ``proto`` checks its shape before calling this.
    """
    try:
        entry = _BY_TF[proto.dtype]
    except KeyError:
        raise TypeError(f"unsupported TensorFlow dtype {proto.dtype}") from None
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise ValueError(f"tensor shape {list(shape)} is not fully defined")
    count = math.prod(shape)
    content = proto.tensor_content
    if content and entry is not _STRING:
        # The content defines the tensor; its own typed values beside it are ambiguous.
        if len(getattr(proto, entry.val_field)):
            raise ValueError(f"tensor has both tensor_content and {entry.val_field}; send one")
        expected = count * entry.numpy.itemsize
        if len(content) != expected:
            raise ValueError(
                f"tensor_content has {len(content)} bytes, shape {list(shape)} needs {expected}"
            )
        return np.frombuffer(content, dtype=entry.numpy.newbyteorder("<")).reshape(shape)
    # Typed values: those in another dtype's field would otherwise be silently dropped (zeros).
    foreign = [
        field.name
        for field, _ in proto.ListFields()
        if field.name.endswith("_val") and field.name != entry.val_field
    ]
    if foreign:
        raise ValueError(
            f"{entry.tf_name} values go in {entry.val_field} or tensor_content, not {foreign[0]}"
        )
    return _typed_values(proto, entry, count).reshape(shape)
