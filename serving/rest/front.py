"""The HTTP front door: the checks every HTTP request passes and the hot routes, for both ways a
request arrives.

It refuses what must never reach any handler (no valid API key: 401; a body over
``max_body_bytes``: 413) and serves the hot inference routes, TF Serving ``:predict`` and KServe V2
``/infer`` (``rest/routes.py``), itself: no framework middleware or routing sits between the
server and them. The HTTP protocol (``rest/protocol.py``) calls :meth:`GatewayFront.refuse_head`,
:meth:`~GatewayFront.hot_route` and :meth:`~GatewayFront.serve_hot` directly for a hot request,
with no ASGI cycle; any other request reaches :meth:`GatewayFront.__call__`, the outermost ASGI
callable, which makes the same checks with the same methods and hands what is not a hot route to
the FastAPI app (``rest/app.py``). That app serves the same hot routes too (with
``http_fast_path`` off) through the same handlers (``rest/inference.py``), so ``/docs`` describes
exactly what the front door does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

from serving.auth import DENIED_MESSAGE, ApiKeys
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLarge, Unauthenticated
from serving.metrics import GatewayMetrics
from serving.observe import REQUEST_ID_HEADER_BYTES, TRACEPARENT_HEADER_BYTES, Observer
from serving.rest import inference, routes
from serving.rest.inference import RawResponse, error_response, send_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREDICT = routes.PREDICT.matchers()
#: the access log's route of each hot route (the app's routes are logged by their template),
#: and the protocol label its requests are counted by
PREDICT_ROUTE, INFER_ROUTE = "predict", "infer"
PREDICT_PROTOCOL, INFER_PROTOCOL = "rest", "v2"
#: the protocol label of every other HTTP request (metadata, health, images, /metrics, /docs)
HTTP_PROTOCOL = "http"
#: the most characters of an unrouted request's path the access log keeps
LOGGED_PATH_CHARS = 200
#: a declared body length of more significant digits than this is over any body limit
MAX_LENGTH_DIGITS = 18
_INFER = routes.INFER.matchers()


class HotMatch(NamedTuple):
    """A hot route matched: which one, and its path parameters."""

    is_predict: bool
    params: dict[str, str]


class GatewayFront:
    """Auth and body limit for every HTTP request, then the hot routes or ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_keys: list[str],
        exempt_health: bool,
        dataplane: DataPlane | None = None,
        observer: Observer | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.app = app
        #: begins and ends every HTTP request's record (id, access log, traces)
        self.observer = observer or Observer()
        #: counts the requests refused here (401, 413) in serving_connection_refusals
        self.metrics = metrics
        #: when set, :predict and /infer are served here; else the app serves them
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.keys = ApiKeys(api_keys)
        self.exempt = routes.AUTH_EXEMPT_PREFIXES if exempt_health else ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan (off in the gateway) or websocket: the app's
            await self.app(scope, receive, send)
            return
        # ASGI header names are lower-case bytes; of repeated headers the last one counts.
        headers: dict[bytes, bytes] = dict(scope["headers"])
        path = scope["path"]
        route = self.hot_route(path) if scope["method"] == "POST" else None
        record = self.begin(headers, scope.get("client"), route)
        request_id = record.id.encode()
        length = headers.get(b"content-length", b"")
        if length.isdigit() and len(length) <= MAX_LENGTH_DIGITS:
            record.bytes_in = int(length)

        async def answer(message: Message) -> None:
            """``send`` that echoes the request id and notes the status and bytes sent."""
            if message["type"] == "http.response.start":
                record.http_status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER_BYTES, request_id)]  # fmt: skip
            elif message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
            await send(message)

        try:
            refusal = self.refuse_head(path, headers)
            if refusal is not None:
                self.count_refusal(refusal.status)
                await send_response(answer, refusal)
                return
            if route is not None:
                body = await self._read_body(receive, answer)
                if body is not None:
                    record.bytes_in = len(body)
                    await send_response(answer, await self.serve_hot(route, headers, body))
                return
            if b"content-length" not in headers and scope["method"] in ("POST", "PUT", "PATCH"):
                receive = self._counting(receive)
            await self.app(scope, receive, answer)
        finally:
            if not record.route:  # the app's route template (bounded cardinality), else the path
                matched = scope.get("route")
                record.route = getattr(matched, "path", None) or path[:LOGGED_PATH_CHARS]
            self.observer.end(record)

    def begin(
        self,
        headers: dict[bytes, bytes],
        peer: Any,
        route: HotMatch | None,
        make_current: bool = True,
    ) -> Any:  # observe.RequestRecord
        """The record of an HTTP request whose head has arrived, as this task's current one
        (``make_current`` false: the caller runs outside the request's task)."""  # fmt: skip
        request_id = headers.get(REQUEST_ID_HEADER_BYTES)
        traceparent = (
            headers.get(TRACEPARENT_HEADER_BYTES) if self.observer.tracer is not None else None
        )
        if route is None:
            protocol, name = HTTP_PROTOCOL, ""
        elif route.is_predict:
            protocol, name = PREDICT_PROTOCOL, PREDICT_ROUTE
        else:
            protocol, name = INFER_PROTOCOL, INFER_ROUTE
        return self.observer.begin(
            protocol,
            name,
            request_id.decode("latin-1") if request_id is not None else None,
            peer,
            traceparent.decode("latin-1") if traceparent is not None else None,
            make_current=make_current,
        )

    def count_refusal(self, status: int) -> None:
        """Count a request refused at the door (401, 413) in serving_connection_refusals."""
        if self.metrics is not None:
            self.metrics.count_refusal("http", status)

    def hot_route(self, path: str) -> HotMatch | None:
        """``path``'s hot route (POST :predict or /infer) when the front door serves them."""
        if self.dataplane is None:
            return None
        is_predict = path.startswith("/v1/")
        for matcher in _PREDICT if is_predict else _INFER:
            match = matcher.match(path)
            if match is not None:
                return HotMatch(is_predict, match.groupdict())
        return None

    def refuse_head(self, path: str, headers: dict[bytes, bytes]) -> RawResponse | None:
        """What the head alone decides, before any body is read: 401 without a valid API key,
        413 for a declared length over the limit; None to go on."""
        if self.keys and not path.startswith(self.exempt):
            authorization = headers.get(b"authorization")
            x_api_key = headers.get(b"x-api-key")
            if not self.keys.accepts(
                authorization.decode("latin-1") if authorization else None,
                x_api_key.decode("latin-1") if x_api_key else None,
            ):
                denied = error_response(Unauthenticated(DENIED_MESSAGE), "auth")
                denied.headers.append((b"www-authenticate", b"Bearer"))
                return denied
        length = headers.get(b"content-length")
        if length is not None and length.isdigit():  # else the HTTP parser refused it already
            # Leading zeros are legal: bound the significant digits before converting (Python's
            # int() raises past 4,300 digits); more than 18 exceed any body limit.
            digits = length.lstrip(b"0")
            if len(digits) > MAX_LENGTH_DIGITS:
                return self.body_too_large()
            if int(digits or b"0") > self.max_body_bytes:
                return self.body_too_large(int(digits))
        return None

    def body_too_large(self, length: int | None = None) -> RawResponse:
        """413 for a body over the limit (``length``: the declared one, when known)."""
        what = f"request body of {length} bytes" if length is not None else "request body"
        return error_response(
            PayloadTooLarge(f"{what} exceeds the limit of {self.max_body_bytes} bytes"), "body"
        )

    async def serve_hot(
        self, route: HotMatch, headers: dict[bytes, bytes], body: bytes
    ) -> RawResponse:
        """The answer to a hot request whose head passed :meth:`refuse_head`."""
        dp = self.dataplane
        assert dp is not None  # hot_route matched
        timeout = headers.get(inference.TIMEOUT_HEADER_BYTES)
        timeout_ms = timeout.decode("latin-1") if timeout is not None else None
        params = route.params
        if route.is_predict:
            return await inference.predict(
                dp, params["name"], params.get("version"), params.get("label"), body, timeout_ms
            )
        header_length = headers.get(inference.V2_HEADER_LENGTH_BYTES)
        return await inference.infer(
            dp,
            params["name"],
            params.get("version"),
            body,
            timeout_ms,
            header_length.decode("latin-1") if header_length is not None else None,
        )

    async def _read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body within the limit; None once answered (413) or the client has gone."""
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await send_response(send, self.body_too_large())
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _counting(self, receive: Receive) -> Receive:
        """For the app's chunked bodies (no Content-Length): count while reading, fail past the
        limit (the app's error boundary answers 413)."""
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise PayloadTooLarge(
                    f"request body exceeds the limit of {self.max_body_bytes} bytes"
                )
            return message

        return counted
