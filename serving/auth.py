"""API keys, for every transport (the REST front door and the gRPC interceptor): which header
carries the key, how it is compared, and what a refusal says. Each transport only reads the two
header values from its own request (HTTP headers or gRPC metadata) and answers 401/UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac

#: The refusal's message, the same over REST and gRPC.
DENIED_MESSAGE = "missing or invalid API key (authorization: Bearer <key>, or x-api-key: <key>)"


class ApiKeys:
    """The accepted keys. A key is presented as ``authorization: Bearer <key>`` (RFC 6750; the
    scheme is case-insensitive) or as ``x-api-key: <key>``; when both headers are present the
    bearer token is the one checked. An ``authorization`` header with another scheme presents no
    key."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = [key.encode() for key in keys]

    def __bool__(self) -> bool:
        return bool(self.keys)

    def accepts(self, authorization: str | None, x_api_key: str | None) -> bool:
        """True when the presented key is one of ours (constant time in which key matched)."""
        token = ""
        if authorization and authorization[:7].lower() == "bearer ":
            token = authorization[7:].strip()
        elif x_api_key:
            token = x_api_key.strip()
        if not token:
            return False
        given = token.encode()
        matched = False
        for key in self.keys:  # no early exit that would leak which key matched
            matched |= hmac.compare_digest(given, key)
        return matched
