"""serving/images.py on real encoders' output and on images built to cost more than their size."""

from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from serving.errors import InvalidArgument
from serving.images import (
    BASE_SEGMENTS,
    PNG_MAGIC,
    ImageSpec,
    decode_image,
    peek_size,
    segment_limit,
)

SPEC = ImageSpec(28, 28, 1)
LIMIT = 4096 * 4096


def noise_png(side: int, idat_bytes: int | None = None) -> bytes:
    """A real grayscale noise PNG (incompressible), its compressed data re-cut into IDAT chunks of
    ``idat_bytes`` when given (libpng writes 8 KiB chunks, Pillow 64 KiB)."""
    out = io.BytesIO()
    pixels = np.random.default_rng(side).integers(0, 256, (side, side), np.uint8)
    Image.fromarray(pixels).save(out, format="PNG")
    data = out.getvalue()
    if idat_bytes is None:
        return data
    chunks, position, compressed = [], 8, b""
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        kind, body = data[position + 4 : position + 8], data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            compressed += body
        else:
            chunks.append((kind, body))
        position += 12 + length

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    idats = [compressed[i : i + idat_bytes] for i in range(0, len(compressed), idat_bytes)]
    head, tail = chunks[0], chunks[-1]  # IHDR, IEND
    return data[:8] + chunk(*head) + b"".join(chunk(b"IDAT", part) for part in idats) + chunk(*tail)


@pytest.mark.parametrize("idat_bytes", [None, 8192, 2048])
def test_real_pngs_decode_whatever_their_idat_chunk_size(idat_bytes: int | None) -> None:
    data = noise_png(512, idat_bytes)
    chunks = data.count(b"IDAT")
    if idat_bytes == 2048:  # more chunks than the base allows: the allowance per byte admits them
        assert chunks > BASE_SEGMENTS
    assert decode_image(data, SPEC, LIMIT).shape == (28, 28, 1)


def test_real_jpegs_decode_with_their_metadata() -> None:
    out = io.BytesIO()
    pixels = np.random.default_rng(2).integers(0, 256, (256, 256, 3), np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "camera"
    Image.fromarray(pixels).save(
        out, format="JPEG", progressive=True, exif=exif.tobytes(), comment=b"a comment"
    )
    assert decode_image(out.getvalue(), ImageSpec(28, 28, 3), LIMIT).shape == (28, 28, 3)


def test_images_of_empty_segments_are_refused_before_pillow_parses_them() -> None:
    small = noise_png(28)
    png = (
        small[:33]
        + (struct.pack(">I", 0) + b"prVt" + struct.pack(">I", zlib.crc32(b"prVt"))) * 5400
    )
    png += small[33:]
    with pytest.raises(
        InvalidArgument, match=f"PNG with more than {segment_limit(len(png))} chunks"
    ):
        decode_image(png, SPEC, LIMIT)
    out = io.BytesIO()
    Image.new("L", (28, 28), 9).save(out, format="JPEG")
    jpeg = out.getvalue()[:2] + b"\xff\xfe\x00\x02" * 16000 + out.getvalue()[2:]
    with pytest.raises(InvalidArgument, match="segments before its first scan"):
        decode_image(jpeg, SPEC, LIMIT)


# --- peeking at a header before the body has arrived -------------------------------------------
def _jpeg(progressive: bool, big_app_segment: bool = False) -> bytes:
    out = io.BytesIO()
    pixels = np.random.default_rng(3).integers(0, 256, (120, 200, 3), np.uint8)
    exif = Image.Exif()
    exif[0x010F] = "c" * (60_000 if big_app_segment else 10)  # EXIF before the frame header
    Image.fromarray(pixels).save(
        out, format="JPEG", progressive=progressive, exif=exif.tobytes(), comment=b"comment"
    )
    return out.getvalue()


@pytest.mark.parametrize(
    "data",
    [noise_png(64), noise_png(300, 2048), _jpeg(False), _jpeg(True), _jpeg(True, True)],
    ids=["png", "png-small-idat", "jpeg", "progressive-jpeg", "jpeg-60kb-exif"],
)
def test_peek_reads_the_size_pillow_reads_from_any_long_enough_prefix(data: bytes) -> None:
    """Every prefix gives None (too short to tell) or Pillow's size; the whole image gives it."""
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    answers = {peek_size(data[:length]) for length in range(0, min(len(data), 70_000), 97)}
    assert answers <= {None, size}
    assert peek_size(data) == size


def test_peek_sees_a_declared_size_from_a_few_bytes_and_refuses_what_is_no_image() -> None:
    header = PNG_MAGIC + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 30_000, 20_000)
    assert peek_size(header) == (30_000, 20_000)
    assert peek_size(header[:20]) is None
    assert peek_size(b"\xff\xd8") is None  # the start of a JPEG
    for junk in (b"GIF89a", b"{}", b"\x89PNX"):
        with pytest.raises(InvalidArgument, match="PNG or JPEG expected"):
            peek_size(junk)
    # A structure a peek does not follow (no IHDR first) is left to Pillow: None, no error.
    assert peek_size(PNG_MAGIC + struct.pack(">I", 0) + b"tEXt" + b"\0" * 20) is None


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_big_png_of_inflating_chunks_costs_the_pool_no_inflating() -> None:
    """An 8 MB-class PNG of 4,000 iCCP chunks, each inflating to 1 MiB (about 4 GB in all, ~3 s
    of the only decode thread before): within the chunk limit, so it is decoded, but the chunks
    are dropped unread and the decode takes milliseconds."""
    out = io.BytesIO()
    Image.new("L", (28, 28), 7).save(out, format="PNG")
    png = out.getvalue()
    # 1 KB of zlib stream and 1 KB after it (ignored by the inflater): 2 KB a chunk, so that
    # 4,000 of them stay within the chunk limit of an 8 MB file.
    stream = zlib.compress(bytes(1 << 20), 9)
    profile = _chunk(b"iCCP", b"icc\0\0" + stream + bytes(2048 - len(stream)))
    image = png[:33] + profile * 4000 + png[33:]
    assert segment_limit(len(image)) > 4000
    started = time.perf_counter()
    assert decode_image(image, SPEC, LIMIT).shape == (28, 28, 1)
    assert time.perf_counter() - started < 1.0


def test_a_big_jpeg_of_fill_bytes_is_refused_in_milliseconds() -> None:
    """20 MB of fill bytes before a small JPEG's first segment (~10 s of Pillow's byte-at-a-time
    walk in the pool before, holding the GIL): refused from one regex run."""
    out = io.BytesIO()
    Image.new("L", (28, 28), 7).save(out, format="JPEG")
    jpeg = out.getvalue()
    image = jpeg[:2] + b"\xff" * (20 << 20) + jpeg[2:]
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="fill and stray bytes count"):
        decode_image(image, SPEC, LIMIT)
    assert time.perf_counter() - started < 1.0
