"""``grpc.health.v1.Health`` on the gateway's own gRPC transport (``serving.grpc.transport``).

The same answers as grpc_health's ``HealthServicer``, which the grpcio transport uses: ``Check``
says SERVING / NOT_SERVING for a service set here, NOT_FOUND for any other; ``Watch`` streams a
service's status now and at every change (SERVICE_UNKNOWN for one never set);
``enter_graceful_shutdown`` turns every service NOT_SERVING for good.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2

from serving.errors import bounded_message, shown

SERVICE = "grpc.health.v1.Health"
CHECK_METHOD, WATCH_METHOD = f"/{SERVICE}/Check", f"/{SERVICE}/Watch"
_Status = health_pb2.HealthCheckResponse


class HealthService:
    """Statuses by service name, and the streams watching them."""

    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.shutting_down = False
        self._changed = asyncio.Event()

    async def set(self, service: str, status: int) -> None:
        if self.shutting_down:
            return
        self.statuses[service] = status
        self._wake()

    async def enter_graceful_shutdown(self) -> None:
        for service in self.statuses:
            self.statuses[service] = _Status.NOT_SERVING
        self.shutting_down = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @staticmethod
    def _request(raw: bytes, call: Any) -> Any:
        try:
            return health_pb2.HealthCheckRequest.FromString(raw)
        except DecodeError:
            call.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            call.set_details("request is not a valid HealthCheckRequest message")
            return None

    async def check(self, raw: bytes, call: Any) -> bytes | None:
        request = self._request(raw, call)
        if request is None:
            return None
        status = self.statuses.get(request.service)
        if status is None:
            call.set_code(grpc.StatusCode.NOT_FOUND)
            call.set_details(bounded_message(f"unknown service {shown(request.service)}"))
            return None
        return _Status(status=status).SerializeToString()

    async def watch(self, raw: bytes, call: Any) -> bytes | None:
        """Streams until the client goes (its task is cancelled) or the server stops."""
        request = self._request(raw, call)
        if request is None:
            return None
        last = None
        while True:
            changed = self._changed
            status = self.statuses.get(request.service, _Status.SERVICE_UNKNOWN)
            if status != last:
                await call.write(_Status(status=status).SerializeToString())
                last = status
            await changed.wait()
