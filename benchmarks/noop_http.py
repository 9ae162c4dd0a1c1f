"""A do-nothing ASGI app behind the gateway's own HTTP protocol: the floor of the HTTP transport.

It reads the whole body and answers a fixed TF Serving-shaped reply, served by uvicorn on uvloop
with ``serving.rest.protocol`` exactly as the gateway configures it (no proxy headers, no
lifespan), so the time per request under load is what the transport alone costs.

    python -m benchmarks.noop_http PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn

from serving.rest.protocol import HttpLimits, gateway_protocol

REPLY = b'{"predictions": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(REPLY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": REPLY})


def main() -> None:
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        lifespan="off",
        loop="uvloop",
        http=gateway_protocol(HttpLimits()),  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
