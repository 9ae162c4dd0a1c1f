"""The HTTP front door: the outermost ASGI callable, the one uvicorn calls for every request.

It refuses what must never reach any handler (no valid API key: 401; a body over
``max_body_bytes``: 413) and serves the hot inference routes, TF Serving ``:predict`` and KServe V2
``/infer`` (``rest/routes.py``), itself: no framework middleware or routing sits between the
server and them. Every other request goes to the FastAPI app (``rest/app.py``), which serves the
same hot routes too (with ``http_fast_path`` off) through the same handlers
(``rest/inference.py``), so ``/docs`` describes exactly what the front door does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.auth import DENIED_MESSAGE, ApiKeys
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLarge, Unauthenticated
from serving.rest import inference, routes
from serving.rest.inference import error_response, send_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_PREDICT = routes.PREDICT.matchers()
_INFER = routes.INFER.matchers()


class GatewayFront:
    """Auth and body limit for every HTTP request, then the hot routes or ``app``."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_keys: list[str],
        exempt_health: bool,
        dataplane: DataPlane | None = None,
    ) -> None:
        self.app = app
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
        if self.keys and not scope["path"].startswith(self.exempt):
            authorization = headers.get(b"authorization")
            x_api_key = headers.get(b"x-api-key")
            if not self.keys.accepts(
                authorization.decode("latin-1") if authorization else None,
                x_api_key.decode("latin-1") if x_api_key else None,
            ):
                denied = error_response(Unauthenticated(DENIED_MESSAGE), "auth")
                denied.headers.append((b"www-authenticate", b"Bearer"))
                await send_response(send, denied)
                return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            too_large = PayloadTooLarge(
                f"request body of {int(length)} bytes exceeds the limit of {self.max_body_bytes} bytes"
            )
            await send_response(send, error_response(too_large, "body"))
            return
        if (
            self.dataplane is not None
            and scope["method"] == "POST"
            and await self._serve_hot(self.dataplane, scope["path"], headers, receive, send)
        ):
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    async def _serve_hot(
        self, dp: DataPlane, path: str, headers: dict[bytes, bytes], receive: Receive, send: Send
    ) -> bool:
        """Serve ``path`` if it is a hot route; False to hand it to the app."""
        is_predict = path.startswith("/v1/")
        for matcher in _PREDICT if is_predict else _INFER:
            match = matcher.match(path)
            if match is not None:
                break
        else:
            return False
        body = await self._read_body(receive, send)
        if body is None:
            return True
        timeout = headers.get(inference.TIMEOUT_HEADER_BYTES)
        timeout_ms = timeout.decode("latin-1") if timeout is not None else None
        params = match.groupdict()
        if is_predict:
            response = await inference.predict(
                dp, params["name"], params.get("version"), params.get("label"), body, timeout_ms
            )
        else:
            header_length = headers.get(inference.V2_HEADER_LENGTH_BYTES)
            response = await inference.infer(
                dp,
                params["name"],
                params.get("version"),
                body,
                timeout_ms,
                header_length.decode("latin-1") if header_length is not None else None,
            )
        await send_response(send, response)
        return True

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
                too_large = PayloadTooLarge(
                    f"request body exceeds the limit of {self.max_body_bytes} bytes"
                )
                await send_response(send, error_response(too_large, "body"))
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
