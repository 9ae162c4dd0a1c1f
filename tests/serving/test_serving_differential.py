"""Fast paths agree with the general path (issue 33, point 6): property-based differential tests.

The simdjson fast path for TF Serving JSON (``codecs/regular_json.py``) exists to change speed,
never answers: fed the same random and mutated bodies (BOM, whitespace, duplicate keys,
exponents, deep nesting, huge integers, ragged rows, trailing bytes), it must decline (None) or
give exactly what the general decoder gives, or the same error class. Likewise the image header
walkers (``images.peek_size``, ``images.declared_size``, ``images.jpeg_scans``) against Pillow on
mutated PNGs and JPEGs: a size they read is Pillow's, bytes they call no image Pillow refuses
too, and a comment's bytes are never a scan.
"""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serving import images
from serving.codecs import tfserving
from serving.errors import InvalidArgument, ServingError
from serving.runtimes.base import TensorSpec
from serving.validation import InputLimits

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = InputLimits(max_batch=8)
SPECS = [
    TensorSpec("image", np.dtype(np.uint8), (-1, 2, 2)),
    TensorSpec("x", np.dtype(np.float32), (-1, 3)),
    TensorSpec("ids", np.dtype(np.int64), (-1, 2)),
]
WHITESPACE = st.sampled_from(["", " ", "\n", "\t", "\r\n", "  "])


@st.composite
def number(draw: st.DrawFn) -> str:
    """A JSON number as a client might write it, within or beyond every dtype's range."""
    value = draw(
        st.one_of(
            st.integers(0, 255),
            st.integers(-(2**70), 2**70),
            st.sampled_from([2**63 - 1, 2**63, 2**64, -(2**63), 10**30]),
            st.floats(allow_nan=False, allow_infinity=False, width=64),
        )
    )
    style = draw(st.sampled_from(["plain", "plain", "exponent", "fraction", "negative-zero"]))
    if style == "exponent" and isinstance(value, int) and abs(value) < 10**6:
        return draw(st.sampled_from([f"{value}e0", f"{value}E+0", f"{value * 10}e-1"]))
    if style == "fraction" and isinstance(value, int):
        return f"{value}.0"
    if style == "negative-zero":
        return "-0"
    return repr(value) if isinstance(value, float) else str(value)


@st.composite
def nested(draw: st.DrawFn, shape: tuple[int, ...]) -> str:
    """A nested list of ``shape``, sometimes ragged, written with random whitespace."""
    space = draw(WHITESPACE)
    if not shape:
        return draw(number())
    size = shape[0]
    if draw(st.integers(0, 20)) == 0:  # ragged: one row too short or too long
        size = max(0, size + draw(st.sampled_from([-1, 1])))
    items = [draw(nested(shape[1:])) for _ in range(size)]
    return "[" + space + ("," + space).join(items) + space + "]"


@st.composite
def predict_body(draw: st.DrawFn) -> tuple[TensorSpec, bytes]:
    spec = draw(st.sampled_from(SPECS))
    rows = draw(st.integers(1, 3))
    shape = (rows, *spec.shape[1:])
    value = draw(nested(shape))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):  # deeper than the input's rank
        value = "[" + value + "]"
    if draw(st.integers(0, 30)) == 0:  # nesting past the parsers' depth limits (1,024)
        levels = draw(st.sampled_from([1023, 1025, 1100]))
        value = "[" * levels + value + "]" * levels
    space = draw(WHITESPACE)
    key = draw(st.sampled_from(["instances", "inputs", "inputs-by-name"]))
    if key == "inputs-by-name":
        members = [f'"inputs":{space}{{"{spec.name}":{space}{value}}}']
    else:
        members = [f'"{key}":{space}{value}']
    extra = draw(
        st.sampled_from(
            [None, None, '"signature_name": "serving_default"', '"signature_name": "other"',
             '"signature_name": 5', '"signature_name": "\\ud800"', "duplicate", '"extra": 1']
        )
    )  # fmt: skip
    if extra == "duplicate":
        members.append(members[0])
    elif extra is not None:
        members.insert(draw(st.integers(0, len(members))), extra)
    body = "{" + space + ("," + space).join(members) + space + "}"
    prefix = draw(st.sampled_from(["", "", "", "\ufeff", " ", "\n"]))
    suffix = draw(st.sampled_from(["", "", "", " ", "\n", "]", "x"]))
    return spec, (prefix + body + suffix).encode()


def _outcome(decode: Any) -> Any:
    try:
        return decode()
    except ServingError as exc:
        return type(exc)


def assert_fast_path_agrees(spec: TensorSpec, body: bytes) -> None:
    """The fast path declines ``body``, or answers it as the general path does."""
    fast = _outcome(lambda: tfserving.decode_simple_predict(body, [spec], LIMITS))
    if fast is None:
        return  # declined: the general path decodes it, and words any error
    general = _outcome(lambda: tfserving.decode_general_predict(body, [spec], LIMITS))
    if isinstance(fast, type):
        assert general is fast, (body, fast, general)
        return
    assert not isinstance(general, type), (body, fast, general)
    assert (fast.row_format, fast.signature_name) == (general.row_format, general.signature_name)
    assert fast.inputs.keys() == general.inputs.keys()
    for name, array in fast.inputs.items():
        other = general.inputs[name]
        assert array.dtype == other.dtype and array.shape == other.shape, (body, array, other)
        assert np.array_equal(array, other), (body, array, other)


@SETTINGS
@given(predict_body())
def test_the_fast_json_path_declines_or_answers_as_the_general_path(
    case: tuple[TensorSpec, bytes],
) -> None:
    assert_fast_path_agrees(*case)


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"instances": [[[1, 2], [3, 4]]]}',
        b'{"instances": [[[1, 2], [3, 4]]], "instances": [[[1, 2], [3, 5]]]}',
        b'{"instances": [[[1e0, 2], [3, 4]]]}',
        b'{"instances": [[[18446744073709551616, 2], [3, 4]]]}',
        b'{"instances": [[[[1, 2], [3, 4]]]]}',
        b'{"instances": [[[1, 2], [3, 4]]], "signature_name": "\\ud800"}',
    ],
    ids=["bom", "duplicate-key", "exponent", "huge-integer", "too-deep", "lone-surrogate"],
)
def test_the_fast_path_agrees_on_the_cases_it_is_built_to_reach(body: bytes) -> None:
    """Pinned (the BOM was accepted by the fast path, refused by the general one), and the
    BOM refused by the whole decoder."""
    assert_fast_path_agrees(SPECS[0], body)
    if body.startswith(b"\xef\xbb\xbf"):
        with pytest.raises(InvalidArgument, match="byte order mark"):
            tfserving.decode_predict(body, [SPECS[0]], LIMITS)


# --- image header walkers against Pillow --------------------------------------------------------
def _encoded(image: Image.Image, kind: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


_PIXELS = np.random.default_rng(5).integers(0, 256, (23, 17, 3), np.uint8)
BASE_IMAGES = [
    _encoded(Image.fromarray(_PIXELS[:, :, 0]), "PNG"),
    _encoded(Image.fromarray(_PIXELS), "PNG"),
    _encoded(Image.fromarray(_PIXELS[:, :, 0]), "JPEG", quality=80),
    _encoded(Image.fromarray(_PIXELS), "JPEG", progressive=True),
]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _segment_starts(data: bytes) -> list[int]:
    """Offsets of the JPEG markers before the first scan, or of the PNG chunks."""
    if data.startswith(images.PNG_MAGIC):
        starts, position = [], 8
        while position + 8 <= len(data):
            starts.append(position)
            position += 12 + struct.unpack_from(">I", data, position)[0]
        return starts
    starts, position = [], 2
    while position + 4 <= len(data) and data[position] == 0xFF:
        starts.append(position)
        if data[position + 1] == 0xDA:
            break
        position += 2 + struct.unpack_from(">H", data, position + 2)[0]
    return starts


@st.composite
def mutated_image(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(BASE_IMAGES)))
    is_png = data.startswith(images.PNG_MAGIC)
    for _ in range(draw(st.integers(1, 3))):
        starts = _segment_starts(bytes(data)) or [len(data)]
        at = draw(st.sampled_from(starts))
        kind = draw(
            st.sampled_from(["flip", "fill", "stray", "comment", "frame", "inflating", "truncate"])
        )
        if kind == "flip":
            where = draw(st.integers(0, min(len(data) - 1, 300)))
            data[where] = draw(st.integers(0, 255))
        elif kind == "truncate" and len(data) > 2:
            del data[draw(st.integers(2, len(data) - 1)) :]
        elif is_png and kind in ("comment", "inflating"):
            payload = b"k\0\0" + zlib.compress(bytes(draw(st.integers(0, 5000))))
            data[at:at] = _chunk(b"zTXt" if kind == "comment" else b"iCCP", payload)
        elif is_png and kind == "frame":  # a second IHDR of another size
            data[at:at] = _chunk(b"IHDR", struct.pack(">IIBBBBB", 99, 7, 8, 0, 0, 0, 0))
        elif not is_png and kind == "fill":
            data[at:at] = b"\xff" * draw(st.integers(1, 300))
        elif not is_png and kind == "stray":
            data[at:at] = bytes(draw(st.binary(min_size=1, max_size=50)))
        elif not is_png and kind == "comment":
            comment = b"\xff\xda" * draw(st.integers(0, 120))
            data[at:at] = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
        elif not is_png and kind == "frame":  # another frame header, another size
            frame = struct.pack(">HBHHB", 11, 8, draw(st.integers(0, 70000)) % 65536, 9, 1)
            data[at:at] = b"\xff\xc0" + frame + b"\x01\x11\x00"
    return bytes(data)


def _pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=images.FORMATS) as image:
            return image.size
    except Exception:
        return None


@SETTINGS
@given(mutated_image())
def test_the_header_walkers_read_what_pillow_reads(data: bytes) -> None:
    """A size the full header check reads is Pillow's; a size the streaming peek reads is the
    full check's (or the full check refuses the image); bytes the peek calls no image, Pillow
    and the full check refuse too."""
    pillow = _pillow_size(data)
    try:
        declared: tuple[int, int] | None = images.declared_size(data)
    except InvalidArgument:
        declared = None  # refused by a bound (or not an image): a policy, not a reading
    if declared is not None and pillow is not None:
        assert declared == pillow
    try:
        peeked = images.peek_size(data)
    except InvalidArgument:
        assert pillow is None and declared is None, "the peek refused an image"
        return
    if peeked is not None and declared is not None:
        assert peeked == declared


@SETTINGS
@given(st.integers(0, 300), st.sampled_from(BASE_IMAGES[2:]))
def test_a_comment_is_never_counted_as_scans(pairs: int, jpeg: bytes) -> None:
    scans = images.jpeg_scans(jpeg)
    assert scans == jpeg.count(b"\xff\xda")  # Pillow's own output: no FF DA but the scans'
    comment = b"\xff\xda" * pairs
    with_comment = jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + jpeg[2:]
    assert images.jpeg_scans(with_comment) == scans
