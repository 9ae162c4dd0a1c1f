"""Pure ASGI middleware (no per-request task like BaseHTTPMiddleware): body limit and API keys."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from serving.auth import key_matches
from serving.dataplane import DataPlane
from serving.errors import PayloadTooLarge, Unauthenticated
from serving.rest.inference import error_response, fast_path, send_response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: paths that need no API key when ``auth_exempt_health`` is on (probes and scrapers).
EXEMPT_PREFIXES = ("/v2/health/", "/metrics")


class GatewayMiddleware:
    """Rejects bodies over ``max_body_bytes`` (413) and requests without a valid API key (401);
    serves the hot inference routes directly when given the dataplane."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        api_keys: list[str],
        exempt_health: bool,
        dataplane: DataPlane | None = None,
    ) -> None:
        self.app = app
        #: when set, :predict and /infer are served here without FastAPI (see rest/inference.py)
        self.dataplane = dataplane
        self.max_body_bytes = max_body_bytes
        self.keys = [key.encode() for key in api_keys]
        self.exempt = EXEMPT_PREFIXES if exempt_health else ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if self.keys and not scope["path"].startswith(self.exempt):
            token = headers.get(b"x-api-key", b"").decode("latin-1")
            auth = headers.get(b"authorization", b"").decode("latin-1")
            if auth.lower().startswith("bearer "):
                token = auth[7:].strip()
            if not token or not key_matches(token, self.keys):
                denied = error_response(Unauthenticated(
                    "missing or invalid API key (Authorization: Bearer <key> or x-api-key)"
                ), "auth")  # fmt: skip
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
        if self.dataplane is not None and await fast_path(
            self.dataplane,
            scope,
            receive,
            send,
            self.max_body_bytes,  # type: ignore[arg-type]
        ):
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH"):
            receive = self._counting(receive)
        await self.app(scope, receive, send)

    def _counting(self, receive: Receive) -> Receive:
        """For chunked bodies (no Content-Length): count while reading, fail past the limit."""
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
