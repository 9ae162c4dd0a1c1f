"""FastAPI app: only HTTP concerns (paths, headers, status codes); the work is in the dataplane.

Routes
- TF Serving: ``GET /v1/models/{m}[/versions/{v}|/labels/{l}]`` (status), ``.../metadata``,
  ``POST .../{m}[...]:predict`` (row ``instances`` / columnar ``inputs``, ``{"b64": ...}``).
- Image: ``POST /v1/models/{m}[/versions/{v}|/labels/{l}]:classify_image?top_k=5``, a raw
  PNG/JPEG body or a multipart form with one file.
- KServe V2: ``/v2``, ``/v2/health/live|ready``, ``/v2/models/{m}[/versions/{v}][/ready]``,
  ``POST /v2/models/{m}[/versions/{v}]/infer`` (JSON or binary tensor extension),
  ``/v2/models[/{m}[/versions/{v}]]/stats`` (Triton's statistics extension).
- ``/metrics`` (Prometheus), ``/docs`` (OpenAPI).

Deadline: header ``x-request-timeout-ms`` (else the server's ``request_timeout_s``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIRouter
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from clients.codec import v2_datatype
from serving import __version__, images
from serving.codecs import tfserving_status, v2_statistics
from serving.codecs import v2 as v2_codec
from serving.dataplane import DataPlane
from serving.errors import HttpError, InvalidArgument, ServingError, shown
from serving.repository import ModelVersion
from serving.rest import inference, openapi, routes
from serving.rest.front import GatewayFront
from serving.settings import ServingSettings

log = logging.getLogger(__name__)

JSON = "application/json"


def _error(exc: BaseException, request: Request) -> Response:
    """Any exception as the gateway's error response (see ``inference.error_response``)."""
    if isinstance(exc, RequestValidationError):
        details = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}"
            for err in exc.errors()
        )
        exc = InvalidArgument(f"invalid request: {details}")
    elif isinstance(exc, StarletteHTTPException):  # the framework's own 4xx keeps its status
        detail = str(exc.detail).rstrip(".")
        response = _raw(inference.error_response(HttpError(
            f"{detail}: {request.method} {shown(request.url.path)}", exc.status_code
        ), "http"))  # fmt: skip
        response.headers.update(exc.headers or {})  # e.g. 405's Allow
        return response
    elif isinstance(exc, ClientDisconnect):
        exc = HttpError("client disconnected before sending the whole body", 400)
    return _raw(inference.error_response(exc, f"{request.method} {request.url.path}"))


class ServingRoute(APIRoute):
    """Every exception a route raises becomes the gateway's error JSON (``{"error": ...}``) with
    its status; unexpected ones a 500 with a request id logged with the traceback."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                return _error(exc, request)

        return handle


def _raw(raw: inference.RawResponse) -> Response:
    headers = {k.decode(): v.decode() for k, v in raw.headers}
    return Response(
        raw.body, status_code=raw.status, media_type=raw.content_type.decode(), headers=headers
    )


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status, media_type=JSON
    )


def _version(value: str | None) -> int | None:
    return inference.parse_version(value)


def _timeout(request: Request) -> float | None:
    return inference.parse_timeout(request.headers.get(inference.TIMEOUT_HEADER))


def _class_names(mv: ModelVersion) -> dict[str, list[str]]:
    """``{"class_names": [...]}`` from the version's metadata.json, or ``{}`` when it has none.

    TF Serving's metadata carries no labels; we add them (an extra key stock clients ignore) so a
    client can turn probabilities into labels without a side file.
    """
    return {"class_names": mv.class_names} if mv.class_names else {}


def _preprocessing(mv: ModelVersion) -> dict[str, Any]:
    """``{"preprocessing": {...}}`` for a model that declares how raw pixels become its float
    input (``clients.preprocessing``), or ``{}``: a client applies it before ``classify``."""
    declared = mv.declared_preprocessing
    return {"preprocessing": declared.to_json()} if declared is not None else {}


def _v2_tensors(specs: Any) -> list[dict[str, Any]]:
    return [
        {"name": s.name, "datatype": v2_datatype(s.dtype), "shape": list(s.shape)} for s in specs
    ]


def _route(
    router: APIRouter, path: str, endpoint: Callable[..., Any], method: str, **options: Any
) -> None:
    """Add ``endpoint`` at ``path``, keeping of its optional ``version``/``label`` parameters only
    those the path has: FastAPI would read (and document) the others as query parameters, which
    the fast path, serving the same routes, ignores."""
    in_path = openapi.path_parameters(path)
    signature = inspect.signature(endpoint)
    parameters = [
        p for p in signature.parameters.values()
        if p.name not in ("version", "label") or p.name in in_path
    ]  # fmt: skip

    async def bound(**kwargs: Any) -> Any:
        return await endpoint(**kwargs)

    bound.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    bound.__name__ = endpoint.__name__
    router.add_api_route(path, bound, methods=[method], **options)


PREDICT_EXAMPLE = {"instances": [[[[0]] * 28] * 28]}
#: A multipart image request carries one file; these bound its other form fields.
MAX_FORM_FIELDS = 16
MAX_FORM_FIELD_BYTES = 64 * 1024


async def read_image_body(request: Request, max_pixels: int) -> bytes:
    """A raw image body, refused as soon as its first bytes are not a PNG or JPEG (400) or its
    header declares more than ``max_pixels`` (413): the rest is then never buffered (uvicorn
    drops what follows a finished response), so a refused multi-megabyte body costs little more
    than the kernel's copy of it. The full checks still run on the whole image afterwards."""
    parts: list[bytes] = []
    received = 0
    # Bytes received before the next look at the header (0 = done looking). It doubles each
    # time, so a body arriving in tiny pieces costs a few dozen looks, not one per piece.
    peek_at = 1
    async for chunk in request.stream():
        parts.append(chunk)
        received += len(chunk)
        if peek_at and received >= peek_at:
            size = images.peek_size(b"".join(parts))
            if size is not None:
                images.check_size(size, max_pixels)
                peek_at = 0
            else:
                peek_at = 2 * received if received < images.PEEK_BYTES else 0
    return b"".join(parts)  # one part: the part itself, no copy


def create_app(dataplane: DataPlane, settings: ServingSettings) -> FastAPI:
    """The FastAPI app over ``dataplane``: every route, and the OpenAPI document. It has no auth
    or body limit of its own: serve it behind :func:`create_front`."""
    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's built-in OpenTelemetry spans cost a measurable share of a sub-millisecond
        # request; the gateway exports its own Prometheus metrics.
        extra["telemetry"] = {
            "tracing": False, "metrics": False, "logs": False, "operation_spans": False,
        }  # fmt: skip
    # FastAPIOffline: a FastAPI whose /docs and /redoc load their assets from the installed
    # package, not a CDN, so they render on a private network.
    app = FastAPIOffline(
        title="convnet-serving gateway",
        version=__version__,
        description='TF Serving REST and KServe V2 over ONNX Runtime. Errors are `{"error": message}`.',
        **extra,
    )
    router = APIRouter(route_class=ServingRoute)
    dp = dataplane

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc, request)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _error(exc, request)

    # --- TF Serving REST ------------------------------------------------------------------
    async def status(name: str, version: str | None = None, label: str | None = None) -> Response:
        versions = dp.statuses(name, _version(version), label)
        response = tfserving_status.status_response((v.version, v.state, v.error) for v in versions)
        return _json(tfserving_status.as_json(response))

    async def metadata(name: str, version: str | None = None, label: str | None = None) -> Response:
        mv = dp.resolve(name, _version(version), label)
        assert mv.runtime is not None
        signatures = tfserving_status.signature_def_map(mv.runtime.inputs, mv.runtime.outputs)
        return _json(
            {
                "model_spec": tfserving_status.as_json(
                    tfserving_status.model_spec(name, mv.version)
                ),
                "metadata": {
                    "signature_def": tfserving_status.as_json(signatures),
                    **_class_names(mv),
                    **_preprocessing(mv),
                },
            }
        )

    async def predict(
        request: Request, name: str, version: str | None = None, label: str | None = None
    ) -> Response:
        raw = await inference.predict(
            dp,
            name,
            version,
            label,
            await request.body(),
            request.headers.get(inference.TIMEOUT_HEADER),
        )
        return _raw(raw)

    async def classify_image(
        request: Request,
        name: str,
        version: str | None = None,
        label: str | None = None,
        top_k: int | None = None,
    ) -> Response:
        with dp.observe("image", name) as record:
            mv = dp.resolve(name, _version(version), label)
            record.version = str(mv.version)
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                # One file and a few fields: anything more is refused while parsing (400).
                async with request.form(
                    max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FORM_FIELD_BYTES
                ) as form:
                    files = [value for value in form.values() if isinstance(value, UploadFile)]
                    if not files:
                        raise InvalidArgument("multipart request has no file part")
                    image = await files[0].read()
            else:
                image = await read_image_body(request, dp.image_pixel_limit(mv))
            top = await dp.classify_image(
                mv,
                image,
                top_k if top_k is not None else settings.image_top_k,
                dp.deadline(_timeout(request)),
            )
            return _json(
                {"model_spec": {"name": name, "version": str(mv.version)}, "predictions": top}
            )

    predict_doc = {
        "requestBody": {"content": {JSON: {"example": PREDICT_EXAMPLE}}, "required": True}
    }
    for base in routes.V1_MODEL:
        _route(router, base, status, "GET", tags=["TF Serving"], summary="Model status")
        _route(
            router, base + "/metadata", metadata, "GET", tags=["TF Serving"], summary="Signature"
        )
        _route(router, base + ":classify_image", classify_image, "POST", tags=["Image"],
               summary="Top-k labels for one PNG/JPEG (raw body or multipart file)")  # fmt: skip
    for template in routes.PREDICT.templates:
        _route(router, template, predict, "POST", tags=["TF Serving"],
               summary="Predict (row or columnar)", openapi_extra=predict_doc)  # fmt: skip

    # --- KServe V2 ------------------------------------------------------------------------
    async def server_metadata() -> Response:
        return _json(
            {
                "name": "convnet-serving",
                "version": __version__,
                "extensions": ["binary_tensor_data", "statistics"],
            }
        )

    async def live() -> Response:
        return _json({"live": True})

    async def ready() -> Response:
        is_ready = dp.ready()
        return _json({"ready": is_ready}, 200 if is_ready else 503)

    async def model_ready(name: str, version: str | None = None) -> Response:
        try:
            dp.resolve(name, _version(version))
        except ServingError as exc:
            if exc.status != "UNAVAILABLE":
                raise
            return _json({"name": name, "ready": False}, 503)
        return _json({"name": name, "ready": True})

    async def model_metadata(name: str, version: str | None = None) -> Response:
        mv = dp.resolve(name, _version(version))
        assert mv.runtime is not None
        entry = dp.repository.entry(name)
        return _json(
            {
                "name": name,
                "versions": [str(v.version) for v in entry.available()],
                "platform": "onnxruntime_onnx",
                "inputs": _v2_tensors(mv.runtime.inputs),
                "outputs": _v2_tensors(mv.runtime.outputs),
                # Open Inference Protocol's optional "parameters" object; clients ignore unknowns.
                "parameters": {**_class_names(mv), **_preprocessing(mv)},
            }
        )

    async def all_statistics() -> Response:
        return _json(v2_statistics.statistics_json(dp.statistics(None)))

    async def model_statistics(name: str, version: str | None = None) -> Response:
        return _json(v2_statistics.statistics_json(dp.statistics(name, _version(version))))

    async def infer(request: Request, name: str, version: str | None = None) -> Response:
        raw = await inference.infer(
            dp,
            name,
            version,
            await request.body(),
            request.headers.get(inference.TIMEOUT_HEADER),
            request.headers.get(v2_codec.HEADER_LENGTH),
        )
        return _raw(raw)

    _route(router, routes.V2_SERVER, server_metadata, "GET", tags=["KServe V2"])
    _route(router, routes.V2_LIVE, live, "GET", tags=["KServe V2"])
    _route(router, routes.V2_READY, ready, "GET", tags=["KServe V2"])
    # Before /v2/models/{name}, which would take "stats" for a model's name (as in Triton).
    stats_summary = "Triton's statistics extension"
    _route(router, routes.V2_ALL_STATS, all_statistics, "GET", tags=["KServe V2"],
           summary=stats_summary + ": every model")  # fmt: skip
    for base in routes.V2_MODEL:
        _route(router, base, model_metadata, "GET", tags=["KServe V2"])
        _route(router, base + "/ready", model_ready, "GET", tags=["KServe V2"])
        _route(router, base + routes.V2_STATS_SUFFIX, model_statistics, "GET",
               tags=["KServe V2"], summary=stats_summary)  # fmt: skip
    for template in routes.INFER.templates:
        _route(router, template, infer, "POST", tags=["KServe V2"])

    # --- operations -----------------------------------------------------------------------
    async def metrics() -> Response:
        # With workers, render() reads one file per worker and metric: never on the loop. The
        # single-process registry is cheap but thread-safe, so one path serves both modes.
        body = await asyncio.to_thread(dp.metrics.render)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    _route(router, routes.METRICS, metrics, "GET", tags=["Operations"])
    # Starlette tries routes in order: the hot inference routes go first (a stable sort).
    router.routes.sort(key=lambda r: not getattr(r, "path", "").endswith((":predict", "/infer")))
    app.include_router(router)
    openapi.install(app)
    return app


def create_front(app: FastAPI, dataplane: DataPlane, settings: ServingSettings) -> GatewayFront:
    """What uvicorn serves: the front door (auth, body limit, the hot routes) over ``app``."""
    return GatewayFront(
        app,  # type: ignore[arg-type]
        dataplane=dataplane if settings.http_fast_path else None,
        max_body_bytes=settings.max_body_bytes,
        api_keys=settings.api_keys,
        exempt_health=settings.auth_exempt_health,
        observer=dataplane.observer,
        metrics=dataplane.metrics,
    )
