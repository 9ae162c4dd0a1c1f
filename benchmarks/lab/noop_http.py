"""The floor of the gateway's HTTP transport: its own HTTP protocol with a handler that does
nothing.

By default a hot route (any POST path ending in ``:predict`` or ``/infer``) is served the way the
gateway serves its hot routes, by ``serving.rest.protocol`` itself through the front door's
head checks, with no ASGI cycle; the handler answers a fixed TF Serving-shaped reply. With
``--asgi`` a do-nothing ASGI app answers it instead, through uvicorn's request cycle (what every
other gateway route, and a pipelined hot request, goes through). Both run on uvicorn and uvloop
configured as the gateway configures them (no proxy headers, no lifespan), so the time per request
under load is what the transport alone costs.

    python -m benchmarks.lab.noop_http PORT [--asgi]
"""

from __future__ import annotations

import argparse
from collections.abc import MutableMapping
from typing import Any

import uvicorn

from serving.rest.front import GatewayFront, HotMatch
from serving.rest.inference import RawResponse
from serving.rest.protocol import HttpLimits, gateway_protocol

REPLY = b'{"predictions": [[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(REPLY)).encode())]
MAX_BODY_BYTES = 64 * 1024 * 1024


async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": REPLY})


class NoopFront(GatewayFront):
    """The gateway's front door (its head checks included) whose hot routes do nothing."""

    _MATCH = HotMatch(True, {})

    def hot_route(self, path: str) -> HotMatch | None:
        return self._MATCH if path.endswith((":predict", "/infer")) else None

    async def serve_hot(
        self, route: HotMatch, headers: dict[bytes, bytes], body: bytes
    ) -> RawResponse:
        return RawResponse(200, REPLY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--asgi", action="store_true", help="through uvicorn's ASGI cycle")
    args = parser.parse_args()
    front = NoopFront(app, MAX_BODY_BYTES, api_keys=[], exempt_health=True)
    uvicorn.run(
        app if args.asgi else front,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        lifespan="off",
        loop="uvloop",
        http=gateway_protocol(HttpLimits(), None if args.asgi else front),  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
