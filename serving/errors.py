"""One error hierarchy for the gateway.

Every error carries its canonical status name (gRPC's vocabulary, as TF Serving uses it); the HTTP
status and the gRPC code both come from :data:`STATUS_TABLE` (built on ``clients.errors.Status``),
so the two transports, and the client, never disagree.
"""

from __future__ import annotations

import logging

import grpc

from clients.errors import Status
from serving.observe import current, new_request_id

_GRPC_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}

#: canonical status -> (HTTP status, gRPC code), derived from the clients' normalised table
#: (TF Serving's REST mapping), so server and client read statuses the same way.
STATUS_TABLE: dict[str, tuple[int, grpc.StatusCode]] = {
    status.name: (status.http_status, _GRPC_BY_NUMBER[status.grpc_code]) for status in Status
}
# The gateway's refinements: an oversize body is HTTP 413 (gRPC itself says RESOURCE_EXHAUSTED);
# the HTTP layer's own refusals keep their statuses (405 wrong method, 431 request head too large).
STATUS_TABLE["PAYLOAD_TOO_LARGE"] = (413, grpc.StatusCode.RESOURCE_EXHAUSTED)
STATUS_TABLE["METHOD_NOT_ALLOWED"] = (405, grpc.StatusCode.UNIMPLEMENTED)
STATUS_TABLE["HEADERS_TOO_LARGE"] = (431, grpc.StatusCode.RESOURCE_EXHAUSTED)

#: HTTP status -> canonical status name: the one the client reads back where several share a
#: status, then the gateway's own (413, 405, 431).
_STATUS_BY_HTTP = {s.http_status: Status.from_http_status(s.http_status).name for s in Status}
for _name, (_http, _) in STATUS_TABLE.items():
    _STATUS_BY_HTTP.setdefault(_http, _name)


def shown(value: object, limit: int = 80) -> str:
    """A client-supplied value quoted for an error message, cut to ``limit`` characters: an error
    never echoes a huge request back (a 100 KB model name would not even fit gRPC's trailers)."""
    text = str(value)
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return f"'{text}'"


#: The longest error message sent to a client, REST or gRPC: messages quote client data (names,
#: shapes, values) cut by ``shown`` and ``validation.describe_shape``, and this caps what any of
#: them adds up to. gRPC sends the message as trailing metadata, whose limit (8 KiB by default)
#: drops a longer one: the client would read RESOURCE_EXHAUSTED "Stream removed" instead.
MAX_MESSAGE_CHARS = 1024


def bounded_message(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message`` cut to ``limit`` characters, saying how long it was."""
    if len(message) <= limit:
        return message
    return f"{message[: limit - 40]}... ({len(message)} characters)"


def shown_list(values: list[str], limit: int = 5) -> str:
    """Client-supplied names for an error message: the first ``limit``, each ``shown``."""
    names = ", ".join(shown(value) for value in values[:limit])
    return names + (f" and {len(values) - limit} more" if len(values) > limit else "")


class ServingError(Exception):
    """Base of every error the gateway reports to a client; ``message`` is safe to send."""

    status: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        """HTTP status code for this error."""
        return STATUS_TABLE[self.status][0]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        """gRPC status code for this error."""
        return STATUS_TABLE[self.status][1]


class InvalidArgument(ServingError):
    """The request is malformed: bad JSON, wrong shape or dtype, unknown input or signature."""

    status = "INVALID_ARGUMENT"


class Unauthenticated(ServingError):
    """API keys are configured and the request carries none or a wrong one."""

    status = "UNAUTHENTICATED"


class NotFound(ServingError):
    """Unknown model, version or label."""

    status = "NOT_FOUND"


class PayloadTooLarge(ServingError):
    """The request body is larger than the configured maximum."""

    status = "PAYLOAD_TOO_LARGE"


class ResourceExhausted(ServingError):
    """The model's queue is full: the client should back off and retry."""

    status = "RESOURCE_EXHAUSTED"
    #: how long the client should wait before retrying (REST Retry-After, gRPC retry pushback).
    retry_after_s: float | None = None


class Unavailable(ServingError):
    """The model or the server is not ready (loading, failed, draining), or a worker it needed
    died."""

    status = "UNAVAILABLE"
    #: when set, how long the client should wait before retrying (REST Retry-After).
    retry_after_s: float | None = None


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""

    status = "DEADLINE_EXCEEDED"


class Unimplemented(ServingError):
    """The API exists in TF Serving but this gateway does not provide it."""

    status = "UNIMPLEMENTED"


class InternalError(ServingError):
    """An unexpected failure; the message carries only a request id, never internals."""

    status = "INTERNAL"


class HttpError(ServingError):
    """A refusal the HTTP layer makes itself (unknown route 404, wrong method 405, a malformed
    multipart form 400): it keeps the framework's status and gets the gateway's error body."""

    def __init__(self, message: str, http_status: int) -> None:
        super().__init__(message)
        self._http_status = http_status
        self.status = _STATUS_BY_HTTP.get(
            http_status, "INVALID_ARGUMENT" if http_status < 500 else "INTERNAL"
        )

    @property
    def http_status(self) -> int:
        """The framework's HTTP status."""
        return self._http_status


def as_serving_error(exc: BaseException, logger: logging.Logger, context: str) -> ServingError:
    """A ServingError for any exception; unexpected ones are logged with a fresh request id.

    The client sees only the id (to quote to an operator), never the exception or a stack trace.
    """
    if isinstance(exc, ServingError):
        return exc
    record = current.get()
    request_id = record.id if record is not None else new_request_id()
    logger.error("request %s failed (%s)", request_id, context, exc_info=exc)
    return InternalError(f"internal error; request id {request_id}")
