"""The two hot HTTP routes, TF Serving ``:predict`` and KServe V2 ``/infer``, as plain functions
of (path parameters, header values, body), and the REST error boundary.

The front door (``rest/front.py``) and the FastAPI routes (``rest/app.py``) call the same
functions, so ``/docs`` describes exactly what the front door does, and every REST error body,
wherever it is refused, comes from :func:`error_response`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from serving.codecs import tfserving, v2
from serving.dataplane import DataPlane
from serving.errors import (
    InvalidArgument,
    ServingError,
    as_serving_error,
    bounded_message,
    shown,
)
from serving.observe import REQUEST_ID_HEADER_BYTES, current
from serving.validation import parse_count

log = logging.getLogger(__name__)

JSON = b"application/json"
#: the client's deadline for one request, in milliseconds (else the server's request_timeout_s)
TIMEOUT_HEADER = "x-request-timeout-ms"
TIMEOUT_HEADER_BYTES = TIMEOUT_HEADER.encode()
#: the KServe V2 binary extension's header (the JSON part's length), as ASGI spells header names
V2_HEADER_LENGTH_BYTES = v2.HEADER_LENGTH.encode()


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
    digits = value[1:] if value[:1] == "-" else value
    if not (digits.isascii() and digits.isdigit()):
        raise InvalidArgument(f"version {shown(value)} is not an integer")
    # Bounded before int(): Python raises past 4,300 digits and is quadratic below that.
    return parse_count(digits, "version") * (-1 if value[:1] == "-" else 1)


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
    """The REST error boundary: ``{"error": message, "id": request id}`` with the error's HTTP
    status from the status table; anything unexpected is a 500 whose message is the request id,
    logged with the traceback. Every REST error body (front door, connection refusals, FastAPI
    routes) comes from here; the id is the current request's (``observe.current``).
    """
    error = exc if isinstance(exc, ServingError) else as_serving_error(exc, log, context)
    record = current.get()
    message = bounded_message(error.message)
    if record is not None:
        record.error = message
    response = RawResponse(
        error.http_status,
        tfserving.error_body(message, record.id if record is not None else None),
    )
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
    timeout_ms: str | None,
) -> RawResponse:
    """TF Serving ``:predict`` (row or columnar); ``timeout_ms``: ``x-request-timeout-ms``."""
    try:
        with dp.observe("rest", name) as record:
            mv = dp.resolve(name, parse_version(version), label)
            record.version = str(mv.version)
            assert mv.runtime is not None
            dp.admit(mv, len(body))
            specs, limits = mv.runtime.inputs, dp.input_limits
            decoded: tfserving.PredictRequest | None = None
            if record.timed:
                record.decode_start_ns = time.perf_counter_ns()
            if dp.offloads_json(len(body)):  # parsing it here would stall everyone else
                decoded = await dp.json_pool.run(tfserving.decode_predict, body, specs, limits)
            else:
                decoded = tfserving.decode_simple_predict(body, specs, limits)
                if decoded is None and tfserving.has_b64(body):  # base64, images: off the loop
                    decoded = await dp.decode_pool.run(
                        tfserving.decode_general_predict, body, specs, limits
                    )
                elif decoded is None:
                    decoded = tfserving.decode_general_predict(body, specs, limits)
            if record.timed:
                record.decode_end_ns = time.perf_counter_ns()
            outputs = await dp.predict(
                mv,
                decoded.inputs,
                deadline=dp.deadline(parse_timeout(timeout_ms)),
                signature_name=decoded.signature_name,
            )
            if record.timed:
                record.encode_start_ns = time.perf_counter_ns()
            answer = tfserving.encode_predict(outputs, decoded.row_format)
            if record.timed:
                record.encode_end_ns = time.perf_counter_ns()
            return RawResponse(200, answer)
    except Exception as exc:
        return error_response(exc, f"POST predict {name}")


async def infer(
    dp: DataPlane,
    name: str,
    version: str | None,
    body: bytes,
    timeout_ms: str | None,
    header_length: str | None,
) -> RawResponse:
    """KServe V2 ``/infer`` (JSON, or JSON + binary tensors; ``header_length``: the binary
    extension's ``inference-header-content-length``)."""
    try:
        with dp.observe("v2", name) as record:
            mv = dp.resolve(name, parse_version(version))
            record.version = str(mv.version)
            assert mv.runtime is not None
            dp.admit(mv, len(body))
            specs, limits = mv.runtime.inputs, dp.input_limits
            if record.timed:
                record.decode_start_ns = time.perf_counter_ns()
            if header_length is None and dp.offloads_json(len(body)):  # all JSON: as :predict
                decoded = await dp.json_pool.run(v2.decode_infer, body, None, specs, limits)
            else:  # binary tensors are views of the body; only their JSON header is parsed here
                decoded = v2.decode_infer(body, header_length, specs, limits)
            if record.timed:
                record.decode_end_ns = time.perf_counter_ns()
            outputs = await dp.predict(
                mv,
                decoded.inputs,
                deadline=dp.deadline(parse_timeout(timeout_ms)),
                output_filter=decoded.outputs,
                declared=True,  # decode_infer checked each input before reading its data
            )
            if record.timed:
                record.encode_start_ns = time.perf_counter_ns()
            if decoded.request_id is None:  # V2's id: the client's, else the request's
                decoded.request_id = record.id
            payload, json_length = v2.encode_infer(name, mv.version, outputs, decoded)
            if record.timed:
                record.encode_end_ns = time.perf_counter_ns()
            if json_length is None:
                return RawResponse(200, payload)
            return RawResponse(
                200,
                payload,
                b"application/octet-stream",
                [(V2_HEADER_LENGTH_BYTES, str(json_length).encode())],
            )
    except Exception as exc:
        return error_response(exc, f"POST infer {name}")


def add_request_id(response: RawResponse, request_id: str) -> None:
    """Echo the request's id in ``response``'s ``x-request-id`` header (printable ASCII: see
    ``observe.accept_request_id``)."""
    response.headers.append((REQUEST_ID_HEADER_BYTES, request_id.encode()))


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
