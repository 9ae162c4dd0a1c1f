"""One normalised status and one exception hierarchy, whatever the transport.

Public API:

- ``Status``: enum of TensorFlow/gRPC status codes. Each member has ``grpc_code`` (int, the same
  numbers as ``grpc.StatusCode`` and ``tensorflow.error.Code``), ``http_status`` (TF Serving's REST
  mapping: INVALID_ARGUMENT 400, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503,
  DEADLINE_EXCEEDED 504, ...) and ``retryable``. ``Status.from_grpc_code(int)``,
  ``Status.from_grpc_name("NOT_FOUND")`` and ``Status.from_http_status(int)`` map back.
- ``ServingError`` (base, with ``.status``, ``.message``, ``.http_status``, ``.grpc_code``,
  ``.exit_code``) and its subclasses ``InvalidInput``, ``ModelNotFound``, ``ServerBusy``,
  ``DeadlineExceeded``, ``Unavailable``, ``Unauthenticated``, ``PermissionDenied``, ``Conflict``,
  ``Unimplemented``, ``Cancelled``, ``InternalError``.
- ``EXCEPTION_FOR_STATUS``: ``Status`` -> exception class (derived from the classes' ``statuses``).
- ``error_for_status(status, message)``: the matching exception instance.
- ``error_for_http(status_code, body_text)`` / ``error_for_grpc(code, details)``: decode a failed
  response from either transport into the same exception.

This module imports neither grpc nor httpx, so a server may use it freely.
"""

from __future__ import annotations

import enum
import json
from typing import ClassVar


class Status(enum.Enum):
    """Normalised status: gRPC/TensorFlow code number and TF Serving's HTTP status."""

    OK = (0, 200)
    CANCELLED = (1, 499)
    UNKNOWN = (2, 500)
    INVALID_ARGUMENT = (3, 400)
    DEADLINE_EXCEEDED = (4, 504)
    NOT_FOUND = (5, 404)
    ALREADY_EXISTS = (6, 409)
    PERMISSION_DENIED = (7, 403)
    RESOURCE_EXHAUSTED = (8, 429)
    FAILED_PRECONDITION = (9, 400)
    ABORTED = (10, 409)
    OUT_OF_RANGE = (11, 400)
    UNIMPLEMENTED = (12, 501)
    INTERNAL = (13, 500)
    UNAVAILABLE = (14, 503)
    DATA_LOSS = (15, 500)
    UNAUTHENTICATED = (16, 401)

    @property
    def grpc_code(self) -> int:
        """The gRPC status code number (also ``tensorflow.error.Code``)."""
        return int(self.value[0])

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this status."""
        return int(self.value[1])

    @property
    def retryable(self) -> bool:
        """Whether a client may retry the same request (server overloaded or briefly down)."""
        return self in (Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED)

    @classmethod
    def from_grpc_code(cls, code: int) -> Status:
        """The status for a gRPC code number; unknown numbers give UNKNOWN."""
        return _BY_GRPC_CODE.get(code, Status.UNKNOWN)

    @classmethod
    def from_grpc_name(cls, name: str) -> Status:
        """The status for a code name such as ``"NOT_FOUND"`` (case-insensitive)."""
        try:
            return cls[name.upper()]
        except KeyError:
            return Status.UNKNOWN

    @classmethod
    def from_http_status(cls, http_status: int) -> Status:
        """The status for an HTTP status; several statuses share one, the canonical one wins."""
        if http_status in _BY_HTTP_STATUS:
            return _BY_HTTP_STATUS[http_status]
        if http_status < 400:
            return Status.OK
        if http_status < 500:
            return Status.INVALID_ARGUMENT
        return Status.UNKNOWN


_BY_GRPC_CODE: dict[int, Status] = {s.grpc_code: s for s in Status}
# The inverse of http_status is not unique (400 is INVALID_ARGUMENT, FAILED_PRECONDITION and
# OUT_OF_RANGE): the first member in code order wins, with explicit choices where that is not the
# canonical one, plus 502 (a proxy in front of a restarting server) counted as UNAVAILABLE.
_BY_HTTP_STATUS: dict[int, Status] = {}
for _status in Status:
    _BY_HTTP_STATUS.setdefault(_status.http_status, _status)
_BY_HTTP_STATUS.update({500: Status.INTERNAL, 409: Status.ABORTED, 502: Status.UNAVAILABLE})


class ServingError(Exception):
    """Base of every error the client raises for a failed request, with a normalised status."""

    statuses: ClassVar[tuple[Status, ...]] = (Status.UNKNOWN,)
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status if status is not None else self.statuses[0]

    @property
    def http_status(self) -> int:
        """HTTP status for this error (TF Serving's mapping)."""
        return self.status.http_status

    @property
    def grpc_code(self) -> int:
        """gRPC status code number for this error."""
        return self.status.grpc_code

    def __str__(self) -> str:
        return f"{self.status.name}: {self.message}"


class InvalidInput(ServingError):
    """The request was malformed: wrong input name, dtype, shape or body (HTTP 400)."""

    statuses = (Status.INVALID_ARGUMENT, Status.FAILED_PRECONDITION, Status.OUT_OF_RANGE)
    exit_code = 3


class ModelNotFound(ServingError):
    """No such model, version, label or signature (HTTP 404)."""

    statuses = (Status.NOT_FOUND,)
    exit_code = 4


class ServerBusy(ServingError):
    """The server is overloaded (queue full, rate limit; HTTP 429). Retryable."""

    statuses = (Status.RESOURCE_EXHAUSTED,)
    exit_code = 5


class DeadlineExceeded(ServingError):
    """The request did not complete within its timeout (HTTP 504)."""

    statuses = (Status.DEADLINE_EXCEEDED,)
    exit_code = 6


class Unavailable(ServingError):
    """The server cannot be reached or is not ready (HTTP 503, connection refused). Retryable."""

    statuses = (Status.UNAVAILABLE,)
    exit_code = 7


class Unauthenticated(ServingError):
    """Missing or wrong API key or token (HTTP 401)."""

    statuses = (Status.UNAUTHENTICATED,)
    exit_code = 8


class PermissionDenied(ServingError):
    """Authenticated but not allowed (HTTP 403)."""

    statuses = (Status.PERMISSION_DENIED,)
    exit_code = 9


class Conflict(ServingError):
    """The request conflicts with the server's state (HTTP 409)."""

    statuses = (Status.ABORTED, Status.ALREADY_EXISTS)
    exit_code = 10


class Unimplemented(ServingError):
    """The server does not implement this call (HTTP 501)."""

    statuses = (Status.UNIMPLEMENTED,)
    exit_code = 11


class Cancelled(ServingError):
    """The request was cancelled (HTTP 499)."""

    statuses = (Status.CANCELLED,)
    exit_code = 12


class InternalError(ServingError):
    """The server failed (HTTP 500)."""

    statuses = (Status.INTERNAL, Status.UNKNOWN, Status.DATA_LOSS)
    exit_code = 13


EXCEPTION_FOR_STATUS: dict[Status, type[ServingError]] = {
    status: cls
    for cls in (
        InvalidInput,
        ModelNotFound,
        ServerBusy,
        DeadlineExceeded,
        Unavailable,
        Unauthenticated,
        PermissionDenied,
        Conflict,
        Unimplemented,
        Cancelled,
        InternalError,
    )
    for status in cls.statuses
}


def error_for_status(status: Status, message: str) -> ServingError:
    """The exception for a normalised status (``ServingError`` itself for OK, which is a misuse)."""
    return EXCEPTION_FOR_STATUS.get(status, ServingError)(message, status)


def error_for_http(http_status: int, body: str) -> ServingError:
    """Decode a failed HTTP response: TF Serving's ``{"error": ...}`` or plain text."""
    message = body
    try:
        decoded = json.loads(body)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        # TF Serving and KServe V2 use "error"; FastAPI's own errors use "detail".
        found = decoded.get("error", decoded.get("detail"))
        if found is not None:
            message = found if isinstance(found, str) else json.dumps(found)
    return error_for_status(Status.from_http_status(http_status), message or f"HTTP {http_status}")


def error_for_grpc(code: int, details: str | None) -> ServingError:
    """Decode a failed gRPC call from its status code number and details string."""
    status = Status.from_grpc_code(code)
    return error_for_status(status, details or status.name)
