"""The two hot HTTP routes, TF Serving ``:predict`` and KServe V2 ``/infer``, as plain functions
of (path parameters, headers, body), plus a pure-ASGI fast path that serves them without FastAPI's
per-request routing and dependency machinery (a sizeable share of a sub-millisecond request).

The FastAPI routes call the same functions, so ``/docs`` describes exactly what the fast path does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.codecs import tfserving, v2
from serving.dataplane import DataPlane
from serving.errors import (
    InvalidArgument,
    PayloadTooLarge,
    ServingError,
    as_serving_error,
    shown,
)

log = logging.getLogger(__name__)

JSON = b"application/json"
PREDICT_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+)|/labels/(?P<label>[^/:]+))?:predict$"
)
INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")


@dataclass
class RawResponse:
    """Status, body and headers, independent of the web framework."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def parse_version(value: str | None) -> int | None:
    """A version path parameter as an int (InvalidArgument otherwise)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidArgument(f"version {shown(value)} is not an integer") from None


def parse_timeout(header: str | None) -> float | None:
    """``x-request-timeout-ms`` in seconds: a positive, finite number of milliseconds."""
    if header is None:
        return None
    try:
        milliseconds = float(header)
    except ValueError:
        milliseconds = math.nan
    if not (math.isfinite(milliseconds) and milliseconds > 0):
        raise InvalidArgument(
            f"x-request-timeout-ms {header[:40]!r} is not a positive number of milliseconds"
        )
    return milliseconds / 1000.0


def error_response(exc: BaseException, context: str) -> RawResponse:
    """The REST error boundary: ``{"error": message}`` with the error's HTTP status from the
    status table; anything unexpected is a 500 whose message is a request id that is logged with
    the traceback. Every REST error body, fast path, middleware or FastAPI route, comes from here.
    """
    error = exc if isinstance(exc, ServingError) else as_serving_error(exc, log, context)
    response = RawResponse(error.http_status, tfserving.error_body(error.message))
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:  # HTTP's Retry-After is whole seconds
        response.headers.append((b"retry-after", str(max(1, math.ceil(retry_after))).encode()))
    return response


async def predict(
    dp: DataPlane,
    name: str,
    version: str | None,
    label: str | None,
    body: bytes,
    headers: Mapping[str, str],
) -> RawResponse:
    """TF Serving ``:predict`` (row or columnar)."""
    try:
        with dp.observe("rest", name) as record:
            mv = dp.resolve(name, parse_version(version), label)
            record.version = str(mv.version)
            assert mv.runtime is not None
            dp.admit(mv, len(body))
            specs, limits = mv.runtime.inputs, dp.input_limits
            decoded = tfserving.decode_simple_predict(body, specs, limits)
            if decoded is None and tfserving.has_b64(body):  # base64, images: off the loop
                decoded = await dp.decode_pool.run(
                    tfserving.decode_general_predict, body, specs, limits
                )
            elif decoded is None:
                decoded = tfserving.decode_general_predict(body, specs, limits)
            outputs = await dp.predict(
                mv,
                decoded.inputs,
                deadline=dp.deadline(parse_timeout(headers.get("x-request-timeout-ms"))),
                signature_name=decoded.signature_name,
            )
            return RawResponse(200, tfserving.encode_predict(outputs, decoded.row_format))
    except Exception as exc:
        return error_response(exc, f"POST predict {name}")


async def infer(
    dp: DataPlane, name: str, version: str | None, body: bytes, headers: Mapping[str, str]
) -> RawResponse:
    """KServe V2 ``/infer`` (JSON, or JSON + binary tensors)."""
    try:
        with dp.observe("v2", name) as record:
            mv = dp.resolve(name, parse_version(version))
            record.version = str(mv.version)
            assert mv.runtime is not None
            dp.admit(mv, len(body))
            decoded = v2.decode_infer(
                body, headers.get(v2.HEADER_LENGTH), mv.runtime.inputs, dp.input_limits
            )
            outputs = await dp.predict(
                mv,
                decoded.inputs,
                deadline=dp.deadline(parse_timeout(headers.get("x-request-timeout-ms"))),
                output_filter=decoded.outputs,
                declared=True,  # decode_infer checked each input before reading its data
            )
            payload, header_length = v2.encode_infer(name, mv.version, outputs, decoded)
            if header_length is None:
                return RawResponse(200, payload)
            return RawResponse(
                200,
                payload,
                b"application/octet-stream",
                [(b"inference-header-content-length", str(header_length).encode())],
            )
    except Exception as exc:
        return error_response(exc, f"POST infer {name}")


async def fast_path(dp: DataPlane, scope: Any, receive: Any, send: Any, body_limit: int) -> bool:
    """Serve ``scope`` if it is a hot inference route; False to let FastAPI handle it."""
    if scope["method"] != "POST":
        return False
    path = scope["path"]
    match = PREDICT_PATH.match(path) if path.startswith("/v1/") else INFER_PATH.match(path)
    if match is None:
        return False
    # ASGI header names are lower-case already.
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return True
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > body_limit:
            too_large = PayloadTooLarge(f"request body exceeds the limit of {body_limit} bytes")
            await send_response(send, error_response(too_large, "body"))
            return True
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    groups = match.groupdict()
    if "label" in groups:
        response = await predict(
            dp, groups["name"], groups["version"], groups["label"], body, headers
        )
    else:
        response = await infer(dp, groups["name"], groups["version"], body, headers)
    await send_response(send, response)
    return True


async def send_response(send: Any, response: RawResponse) -> None:
    """Send ``response`` over ASGI."""
    await send(
        {
            "type": "http.response.start",
            "status": response.status,
            "headers": [
                (b"content-type", response.content_type),
                (b"content-length", str(len(response.body)).encode()),
                *response.headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": response.body})
