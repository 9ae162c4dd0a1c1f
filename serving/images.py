"""PNG/JPEG bytes -> uint8 NHWC arrays, following a model's ``preprocessing`` metadata.

Core, not a wire codec: what an image becomes is the model's business (its metadata says the
size, colour mode and resize), whichever transport carried the bytes (the image endpoint's raw
body or multipart file, or TF Serving JSON's ``{"b64": ...}`` values).

An encoded image is the one input whose cost is not bounded by its size: a 69-byte PNG can
declare 30000x30000 pixels, a 140 KB one 12000x12000. So the declared size is read from the header
and checked against a pixel limit before anything is decoded (:func:`declared_size`,
:func:`pixel_limit`, :func:`check_size`); the dataplane refuses an image above the limit at once,
decodes small images inline and big ones in a bounded pool off the event loop.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from serving.errors import InvalidArgument, PayloadTooLarge

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
FORMATS = ("PNG", "JPEG")

# Every image's declared size is checked against the gateway's own limit (pixel_limit) before
# anything is decoded; Pillow's process-wide bomb check (a warning above 89 megapixels, an error
# above 179) would only pre-empt it with another message, or refuse what an operator allowed.
Image.MAX_IMAGE_PIXELS = None

#: The derived pixel limit (``--max-image-pixels 0``): this many pixels per pixel of the model's
#: input, and never less than MIN_DERIVED_PIXELS (2048 x 2048).
DERIVED_PIXELS_PER_INPUT_PIXEL = 256
MIN_DERIVED_PIXELS = 2048 * 2048

#: The derived per-request budget (``--max-request-image-pixels 0``): the pixels of this many
#: images at the per-image limit, whatever the number of images. The per-image limit alone bounds
#: one decode, not a batch: 1,024 small PNGs that each declare the limit's size cost seconds.
DERIVED_REQUEST_IMAGES = 16

#: The most scans a JPEG may have. A progressive JPEG has about 10 (libjpeg's default script) and
#: a baseline one 1 to 4; every scan makes the decoder walk the whole image again, so without a
#: bound a few bytes per repeated scan buy a full pass over an image as large as the pixel limit.
MAX_JPEG_SCANS = 100

#: The most chunks (PNG) or segments before the first scan (JPEG) an image may have: this many,
#: plus one per SEGMENT_BYTES of the file. Pillow parses each in Python (about 4 us for an empty
#: PNG chunk, 1 us for an empty 4-byte JPEG comment), so without a bound a 64 KiB image of empty
#: segments costs 16 to 23 ms before a pixel is decoded, on the event loop for a small image;
#: real images have a handful, and big PNGs' IDAT chunks are kilobytes each.
BASE_SEGMENTS = 64
SEGMENT_BYTES = 2048


@dataclass(frozen=True)
class ImageSpec:
    """What one image must become: height, width, channels (1 = grayscale, 3 = RGB)."""

    height: int
    width: int
    channels: int

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any], input_shape: tuple[int, ...]) -> ImageSpec:
        """From metadata.json's ``preprocessing``, else from the input shape [-1, H, W, C]."""
        pre = metadata.get("preprocessing") or {}
        shape = list(input_shape[1:]) if len(input_shape) == 4 else [28, 28, 1]
        height = int(pre.get("height") or (shape[0] if shape[0] > 0 else 28))
        width = int(pre.get("width") or (shape[1] if shape[1] > 0 else 28))
        channels = pre.get("channels")
        if channels is None:
            color = str(pre.get("color_mode", "")).lower()
            channels = (
                1 if color in ("grayscale", "l", "gray") else (shape[2] if shape[2] > 0 else 3)
            )
        return cls(height, width, int(channels))


def pixel_limit(spec: ImageSpec, configured: int) -> int:
    """The most pixels an image for ``spec`` may declare: ``configured``, or derived when 0."""
    if configured > 0:
        return configured
    return max(MIN_DERIVED_PIXELS, DERIVED_PIXELS_PER_INPUT_PIXEL * spec.height * spec.width)


def request_pixel_limit(spec: ImageSpec, limits_per_image: int, configured: int) -> int:
    """The most pixels all images of one request may declare together: ``configured``, or
    ``DERIVED_REQUEST_IMAGES`` times the per-image limit when 0."""
    if configured > 0:
        return configured
    return DERIVED_REQUEST_IMAGES * pixel_limit(spec, limits_per_image)


class PixelBudget:
    """The pixels one request's images have declared so far, checked before each is decoded."""

    def __init__(self) -> None:
        self.spent = 0

    def spend(self, pixels: int, limit: int) -> None:
        """Count ``pixels`` more; PayloadTooLarge (nothing counted) when the total would pass
        ``limit``."""
        if self.spent + pixels > limit:
            raise PayloadTooLarge(
                f"the images of this request declare more than {limit} pixels together "
                f"({self.spent} before one of {pixels}; --max-request-image-pixels)"
            )
        self.spent += pixels


def looks_like_image(data: bytes) -> bool:
    """True for PNG or JPEG magic bytes."""
    return data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)


def _open(data: bytes) -> Image.Image:
    """The image's header parsed (nothing decoded yet); InvalidArgument if it is not PNG/JPEG.

    Pillow sees the image only after :func:`_walk_header` has bounded its structure and dropped
    what Pillow would inflate for nothing (see ``INFLATED_PNG_CHUNKS``)."""
    if not data:
        raise InvalidArgument("image is empty")
    if not looks_like_image(data):
        raise InvalidArgument("cannot decode image: PNG or JPEG expected")
    data = _walk_header(data)
    try:
        return Image.open(io.BytesIO(data), formats=FORMATS)
    except Exception as exc:  # anything Pillow raises on these bytes means they are not an image
        raise InvalidArgument(f"cannot decode image (PNG or JPEG expected): {exc}") from None


def segment_limit(size: int) -> int:
    """The most PNG chunks or JPEG segments (before the first scan) an image of ``size`` bytes
    may have."""
    return BASE_SEGMENTS + size // SEGMENT_BYTES


#: PNG chunks whose data Pillow inflates (zlib) as it meets them, text and ICC profiles: up to a
#: megabyte each (Pillow's own cap per chunk), so a 58 KB PNG of 56 of them cost 80-100 ms of
#: inflating. None changes a pixel: they are dropped, never inflated, before Pillow sees the image.
INFLATED_PNG_CHUNKS = frozenset({b"zTXt", b"iTXt", b"iCCP"})

_JPEG_FILL = re.compile(rb"\xff+")  # fill bytes before a marker (the last is the marker's own)
_JPEG_STRAY = re.compile(rb"[^\xff]+")  # bytes where a marker should be, which Pillow skips


def _walk_header(data: bytes) -> bytes:
    """The image bytes Pillow may parse: ``data`` once its structure is bounded, a PNG without
    its ``INFLATED_PNG_CHUNKS``.

    InvalidArgument when the image has more chunks (PNG), or segments before its first scan
    (JPEG; fill bytes and stray bytes between segments count one each, as Pillow walks them a
    byte at a time in Python), than ``segment_limit``; the walk stops there, and a run of fill or
    stray bytes is measured in one step, so it costs at most that many steps of Python. A
    structure that breaks off (a length past the end) ends the walk: Pillow reports what is wrong
    with it."""
    limit = segment_limit(len(data))
    count = 0
    if data.startswith(PNG_MAGIC):
        kind, position = "PNG with more than {} chunks", len(PNG_MAGIC)
        dropped: list[tuple[int, int]] = []
        while position + 8 <= len(data) and count <= limit:
            (length,) = struct.unpack_from(">I", data, position)
            chunk_type = data[position + 4 : position + 8]
            count += 1
            if chunk_type == b"IHDR" and count > 1:  # Pillow would take the last one's size
                raise InvalidArgument("PNG with an IHDR chunk after its first chunk")
            if chunk_type in INFLATED_PNG_CHUNKS:
                dropped.append((position, position + 12 + length))
            position += 12 + length  # length, type, data, CRC
            if chunk_type == b"IEND":
                break
        if count <= limit and dropped:
            kept, at = [], 0
            for begin, end in dropped:
                kept.append(data[at:begin])
                at = end
            kept.append(data[at:])
            data = b"".join(kept)
    else:  # JPEG: markers up to the first scan, whose entropy-coded data libjpeg reads in C
        kind = "JPEG with more than {} segments before its first scan (fill and stray bytes count)"
        position = 2
        while position < len(data) and count <= limit:
            if data[position] != 0xFF:  # stray bytes where a marker should start
                # Matched at most one past the budget: the regex never runs further than the limit.
                stray = _JPEG_STRAY.match(data, position, position + limit - count + 1)
                assert stray is not None
                count += stray.end() - position
                position = stray.end()
                continue
            fill = _JPEG_FILL.match(data, position, position + limit - count + 2)
            assert fill is not None
            count += fill.end() - position - 1  # fill bytes before the marker's own 0xFF
            position = fill.end() - 1
            if position + 1 >= len(data):
                break
            marker = data[position + 1]
            count += 1
            if marker == 0xDA:  # start of scan
                break
            if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD9:  # markers without a length
                position += 2
                continue
            if position + 4 > len(data):
                break
            (length,) = struct.unpack_from(">H", data, position + 2)
            position += 2 + length
    if count > limit:
        raise InvalidArgument(
            f"{kind.format(limit)} in {len(data)} bytes (at most {BASE_SEGMENTS} plus one per "
            f"{SEGMENT_BYTES} bytes)"
        )
    return data


def check_size(size: tuple[int, int], max_pixels: int) -> None:
    """PayloadTooLarge when an image of ``size`` (width, height) has more than ``max_pixels``."""
    width, height = size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image of {width}x{height} pixels exceeds the limit of {max_pixels} pixels "
            "(--max-image-pixels)"
        )


# A marker as libjpeg finds one in entropy-coded data: 0xFF followed by anything but a stuffed
# zero, a restart marker (RST0-7, inside a scan) or another 0xFF (fill).
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_scans(data: bytes) -> int:
    """The scans of a JPEG, counted by walking its markers: every segment is skipped by its
    length (a comment or an embedded thumbnail may hold the bytes FF DA without being a scan),
    each scan's entropy-coded data is searched in C for the next marker. Stops once the count
    passes ``MAX_JPEG_SCANS``; InvalidArgument when the image has more markers than its scans'
    limit plus ``segment_limit`` (the walk is Python, one step per marker)."""
    scans, steps, position = 0, 0, 2
    most_steps = MAX_JPEG_SCANS + segment_limit(len(data))
    while scans <= MAX_JPEG_SCANS:
        found = _JPEG_MARKER.search(data, position)
        if found is None:
            break
        position = found.start()
        marker = data[position + 1]
        steps += 1
        if steps > most_steps:
            raise InvalidArgument(f"JPEG with more than {most_steps} markers in {len(data)} bytes")
        if marker == 0xD9:  # end of image
            break
        if marker in (0x01, 0xD8) or position + 4 > len(data):  # no length, or cut off
            position += 2
            continue
        if marker == 0xDA:
            scans += 1
        (length,) = struct.unpack_from(">H", data, position + 2)
        position += 2 + length
    return scans


def _check_scans(data: bytes) -> None:
    scans = jpeg_scans(data)
    if scans > MAX_JPEG_SCANS:
        raise InvalidArgument(
            f"JPEG with more than {MAX_JPEG_SCANS} scans, the limit (progressive JPEGs have "
            "about 10)"
        )


#: How much of a streamed image body :func:`peek_size` may look at for the header (a JPEG's
#: metadata segments come before its size); past it the whole body is read and parsed as before.
PEEK_BYTES = 256 * 1024

#: JPEG start-of-frame markers (they carry the size): C0 to CF except DHT, JPG and DAC.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def peek_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG or JPEG, before the rest has arrived; None
    while ``head`` is too short to tell, or when its structure is not the plain one (Pillow then
    judges the whole image). InvalidArgument as soon as the bytes cannot start a PNG or JPEG.

    PNG: the IHDR chunk, which must come first. JPEG: the segments up to the first scan (the
    last start-of-frame before it, as Pillow reads it), walked at most
    ``segment_limit(len(head))`` steps."""
    for magic in (PNG_MAGIC, JPEG_MAGIC):
        if head[: len(magic)] == magic[: len(head)]:
            break
    else:
        raise InvalidArgument("cannot decode image: PNG or JPEG expected")
    if head.startswith(PNG_MAGIC):
        if len(head) < 24 or head[12:16] != b"IHDR":
            return None
        width, height = struct.unpack_from(">II", head, 16)
        return width, height
    if not head.startswith(JPEG_MAGIC):
        return None  # a prefix of a magic so far
    # Pillow's size is the last frame header's before the first scan: the peek reads up to it.
    size: tuple[int, int] | None = None
    position, steps, limit = 2, 0, segment_limit(len(head))
    while position + 4 <= len(head) and steps <= limit and head[position] == 0xFF:
        marker = head[position + 1]
        steps += 1
        if marker == 0xFF:  # fill bytes before a marker: a run measured in one step
            fill = _JPEG_FILL.match(head, position, position + limit - steps + 3)
            assert fill is not None
            steps += fill.end() - position - 2
            position = fill.end() - 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD9:  # markers without a length
            position += 2
        elif marker == 0xDA:  # the first scan: the size so far (None: no frame, Pillow judges)
            return size
        else:
            (length,) = struct.unpack_from(">H", head, position + 2)
            if marker in _JPEG_SOF:
                if position + 9 > len(head):
                    return None
                height, width = struct.unpack_from(">HH", head, position + 5)
                size = width, height
            position += 2 + length
    return None


def declared_size(data: bytes) -> tuple[int, int]:
    """(width, height) as the image's header declares them, without decoding any pixel;
    InvalidArgument when the bytes are not a PNG or JPEG."""
    with _open(data) as image:
        return image.size


def decode_image(
    data: bytes,
    spec: ImageSpec,
    max_pixels: int,
    budget: PixelBudget | None = None,
    budget_limit: int = 0,
) -> np.ndarray:
    """Decode, convert the colour mode and resize; returns uint8 ``[H, W, C]``.

    The declared size is checked against ``max_pixels`` before decoding (413 above it), then
    spent from the request's ``budget`` when one is given (413 once its images together pass
    ``budget_limit``), and a JPEG's scans are checked against ``MAX_JPEG_SCANS`` (400 above it).
    A JPEG much larger than the target is decoded at a reduced scale (libjpeg's DCT scaling,
    never below the target size), which halves its cost or better.
    """
    with _open(data) as image:
        check_size(image.size, max_pixels)
        if budget is not None:
            budget.spend(image.size[0] * image.size[1], budget_limit)
        if image.format == "JPEG":
            _check_scans(data)
        mode = "L" if spec.channels == 1 else "RGB"
        try:
            if image.format == "JPEG":
                image.draft(mode, (spec.width, spec.height))
            converted = image.convert(mode)
            if converted.size != (spec.width, spec.height):
                converted = converted.resize((spec.width, spec.height), Image.Resampling.BILINEAR)
            array = np.asarray(converted, dtype=np.uint8)
        except MemoryError:
            raise
        except Exception as exc:  # truncated or corrupt data: Pillow's errors vary by codec
            raise InvalidArgument(f"cannot decode image (PNG or JPEG expected): {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return array
