"""uvicorn's httptools protocol with a bound on the size of a request's head (431 above it).

httptools keeps a header's name and value in memory until the header ends, and uvicorn keeps
every header until the request line and headers are complete, with no limit: a client could grow
one connection's memory with an endless header. Here the bytes fed to the parser while a
request's head is incomplete are counted, and past ``max_header_bytes`` the connection is answered
``431 Request Header Fields Too Large`` and closed, so a head costs at most the limit plus one
read from the socket.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

HEADER_TOO_LARGE = 431


class _HeadTooLarge(httptools.HttpParserError):
    """Raised from a parser callback: httptools stops, uvicorn's error path answers (431)."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol that refuses request heads over ``max_header_bytes``."""

    max_header_bytes = 16 * 1024

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_incomplete = True  # a connection starts by waiting for a request head
        self._head_bytes = 0  # bytes of earlier reads that were all head
        self._message_ended = False  # a request ended within the read being parsed
        self._head_refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_incomplete = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        self._head_incomplete = False
        # Exact, for every request (about a microsecond): a head that arrived in one read.
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_header_bytes:
            self._head_refused = True
            raise _HeadTooLarge("request head too large")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._head_incomplete = True  # what follows on this connection is the next request's head
        self._head_bytes = 0
        self._message_ended = True

    def data_received(self, data: bytes) -> None:
        self._message_ended = False
        super().data_received(data)
        # A head that has not ended: count the reads that were nothing but head (a read in which
        # a request ended is not counted, as only part of it can be the next head). So a head
        # that never ends is refused after at most the limit plus one read.
        if (
            self._head_incomplete
            and not self._message_ended
            and not self._head_refused
            and self.transport is not None
            and not self.transport.is_closing()
        ):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._head_refused = True
                self._refuse_head()

    def send_400_response(self, msg: str) -> None:
        if self._head_refused:  # our callback stopped the parser: answer 431, not 400
            self._refuse_head()
            return
        super().send_400_response(msg)

    def _refuse_head(self) -> None:
        body = orjson.dumps(
            {
                "error": "request line and headers exceed the limit of "
                f"{self.max_header_bytes} bytes (--max-header-bytes)"
            }
        )
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[HEADER_TOO_LARGE],
                    b"content-type: application/json\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def bounded_protocol(max_header_bytes: int) -> type[asyncio.Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with this head limit."""
    return type(
        "BoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {"max_header_bytes": max_header_bytes},
    )
