"""The commonest TF Serving REST body, decoded without building Python lists.

``{"instances": [[[[95], [130], ...]]]}`` for a one-input numeric model is what nearly every
client sends. ``orjson.loads`` turns a 28x28x1 image of it into 813 lists and 784 ints, and
turning those into an array costs more again: together the largest share of the event loop's
time per REST request (benchmarks/RESULTS.md, "Gateway speed, 2026-11-27, later", item 1).
simdjson parses the same body without building Python objects and copies its numbers straight
into a buffer, but it flattens any nesting, ragged or not. Regularity is
proved separately and exactly: with the numbers and whitespace deleted, a valid JSON array of
numbers is regular of shape ``s`` if and only if its bytes equal the skeleton of ``s`` (only
brackets and commas) and it holds ``prod(s)`` numbers.

Anything else (several inputs, named instances, b64, bools, strings, ragged or empty lists,
integers beyond int64, invalid JSON) returns None and takes the general path in
``tfserving``, which owns every error message. So this module changes speed, never answers:
``tests/serving/test_serving_codecs.py`` decodes every case both ways and compares.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import simdjson

from serving.runtimes.base import TensorSpec

# Bytes that can only belong to numbers or whitespace in a JSON document of arrays and numbers.
_NUMBER_OR_SPACE = b"0123456789+-.eE \t\n\r"
# What a single-key body's skeleton starts with: the key loses its number characters too.
_BODY_PREFIXES = {
    key: b"{" + f'"{key}":'.encode().translate(None, _NUMBER_OR_SPACE)
    for key in ("instances", "inputs")
}
# Integers beyond 2**53 are not all exact in float64: leave them to the general path's int64.
_EXACT_FLOAT_LIMIT = float(2**53)
_UTF8_BOM = b"\xef\xbb\xbf"

#: Bodies up to this size reuse a per-thread parser (which then keeps ~8x this much memory).
SHARED_PARSER_MAX_BYTES = 1 << 20

_local = threading.local()


@functools.lru_cache(maxsize=64)
def element_skeleton(shape: tuple[int, ...]) -> bytes:
    """The bytes of a regular nested list of ``shape`` once numbers and whitespace are deleted."""
    text = b""
    for size in reversed(shape):
        text = b"[" + b",".join([text] * size) + b"]"
    return text


def skeleton_length(shape: list[int]) -> int:
    """``len`` of the skeleton of ``shape``, without building it: brackets plus commas."""
    length = 0
    for size in reversed(shape):
        length = 2 + size * length + (size - 1)
    return length


def _skeleton(shape: list[int]) -> bytes:
    # The per-element part is cached; the batch dimension, which varies, is joined per request.
    return b"[" + b",".join([element_skeleton(tuple(shape[1:]))] * shape[0]) + b"]"


def _parser_for(body: bytes) -> simdjson.Parser:
    """A parser for ``body``: this thread's reused one for ordinary bodies, a fresh one for big ones.

    A parser keeps the buffers of the largest document it has seen, about 8x its size (an 8.9 MB
    body left 74 MB resident): reusing it saves allocations on the common small body, but one
    64 MiB request must not pin half a gigabyte per thread for the life of the process.
    """
    if len(body) > SHARED_PARSER_MAX_BYTES:
        return simdjson.Parser()
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def _parse(body: bytes) -> object:
    """The parsed document; ValueError for anything simdjson refuses (the general path words it)."""
    parser = _parser_for(body)
    try:
        return parser.parse(body)
    except RuntimeError as exc:
        # simdjson reports documents it refuses (integers beyond 64 bits, nesting too deep) as
        # RuntimeError with its error code in the message.
        if "re-use" not in str(exc):
            raise ValueError(str(exc)) from None
        # It also refuses to reuse a parser while proxies into its last document live (only if
        # an earlier caller kept one, e.g. in a traceback): start a fresh parser.
        _local.parser = simdjson.Parser()
        try:
            return _local.parser.parse(body)
        except RuntimeError as again:
            raise ValueError(str(again)) from None


def decode_single_tensor(
    body: bytes, spec: TensorSpec
) -> tuple[np.ndarray, bool, str | None] | None:
    """``(array, row_format, signature_name)`` for a body that holds one regular numeric tensor.

    The array is batch-major in the JSON number type (int64 or float64), exactly what the general
    path's ``np.asarray`` would have produced; the caller casts it to ``spec.dtype``. None means
    "not this simple case": decode the general way.
    """
    if spec.dtype.kind not in "iuf" or body.startswith(_UTF8_BOM):
        return None  # a BOM: simdjson skips it, orjson (the general path) refuses it
    try:
        doc = _parse(body)
    except ValueError:  # invalid or refused JSON: the general path words the error
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    key = next((k for k in keys if k in _BODY_PREFIXES), None)
    signature: str | None = None
    if key is None or len(keys) > 2 or len(set(keys)) != len(keys):
        return None
    if len(keys) == 2:
        other = next(k for k in keys if k != key)
        if other != "signature_name":
            return None
        given = doc[other]
        if not isinstance(given, str):
            return None
        signature = given
    value = doc[key]
    # A body of one key and a list: its own bytes carry the skeleton, no need to re-serialise.
    body_skeleton_prefix = _BODY_PREFIXES[key] if len(keys) == 1 else None
    if isinstance(value, simdjson.Object):  # columnar by name: {"inputs": {"image": [...]}}
        if key != "inputs" or list(value.keys()) != [spec.name]:
            return None
        value = value[spec.name]
        body_skeleton_prefix = None
    array = _regular_numbers(value, spec, body, body_skeleton_prefix)
    if array is None:
        return None
    return array, key == "instances", signature


def _has_skeleton(
    value: simdjson.Array, skeleton: bytes, body: bytes, body_skeleton_prefix: bytes | None
) -> bool:
    """Whether ``value``'s brackets and commas are exactly ``skeleton``.

    Translating the whole body is several times cheaper than minifying the value, so the body is
    tried first when it is ``{"<key>": value}``; if it does not match (an escaped key, say), the
    minified value decides.
    """
    if body_skeleton_prefix is not None and body.translate(None, _NUMBER_OR_SPACE) == (
        body_skeleton_prefix + skeleton + b"}"
    ):
        return True
    mini: bytes | str = value.mini  # bytes at run time; the package's stub says str
    if isinstance(mini, str):
        mini = mini.encode()
    return mini.translate(None, _NUMBER_OR_SPACE) == skeleton


def _regular_numbers(
    value: object, spec: TensorSpec, body: bytes, body_skeleton_prefix: bytes | None
) -> np.ndarray | None:
    if not isinstance(value, simdjson.Array):
        return None
    shape: list[int] = []
    level: object = value
    while isinstance(level, simdjson.Array):  # the shape along the first element of each level
        size = len(level)
        if size == 0 or len(shape) == len(spec.shape):  # empty, or deeper than the input's rank
            return None
        shape.append(size)
        level = level[0]
    # The shape comes from the first element of each level only: a small body can claim a huge
    # one ([[1, ...1000 numbers], [], [], ...]). A regular body is at least as long as its
    # skeleton, so check that before building it.
    if skeleton_length(shape) > len(body):
        return None
    if not _has_skeleton(value, _skeleton(shape), body, body_skeleton_prefix):
        return None
    try:
        if spec.dtype.kind == "f":
            flat = np.frombuffer(value.as_buffer(of_type="d"), dtype=np.float64)
            if flat.size and np.abs(flat).max() >= _EXACT_FLOAT_LIMIT:
                return None
        else:
            flat = np.frombuffer(value.as_buffer(of_type="i"), dtype=np.int64)
    except (TypeError, ValueError):  # a float for an integer input, a bool, a string, >int64
        return None
    if flat.size != math.prod(shape):  # single-number lists left empty ("[[],[1]]")
        return None
    return flat.reshape(shape)
