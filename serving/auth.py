"""API-key checks shared by every transport (REST middleware, gRPC interceptor): how a presented
key is compared; each transport reads the key from its own headers or metadata."""

from __future__ import annotations

import hmac


def key_matches(candidate: str, keys: list[bytes]) -> bool:
    """Constant-time comparison against every key (no early exit that would leak which matched)."""
    given = candidate.encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key)
    return matched
