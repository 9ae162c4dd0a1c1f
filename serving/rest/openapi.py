"""The gateway's OpenAPI document, true to what every operation answers.

FastAPI documents each route with a 200 of any JSON and a 422 the gateway never sends (its
validation errors are 400 ``{"error": ...}``, like every other failure). :func:`install` replaces
that with what the handlers do: the error body and the statuses each kind of operation can
answer, the response bodies of TF Serving and KServe V2, the request bodies each route takes
(JSON, the V2 binary extension, raw or multipart images) and ``/metrics`` as Prometheus text.
``tests/serving/test_serving_openapi.py`` checks the document against the running gateway with
schemathesis.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/Error"}

#: HTTP status -> when the gateway answers it (the body is always ``Error``).
ERROR_STATUSES: dict[int, str] = {
    400: "Invalid argument: malformed body, wrong input name, dtype, shape or batch size, a bad "
    "header or path parameter.",
    401: "Missing or invalid API key (only when the gateway is started with API keys).",
    404: "Unknown model, version or label.",
    408: "The request's head or body did not arrive within --header-timeout-s / --body-timeout-s "
    "(the connection is closed).",
    413: "Body larger than --max-body-bytes, an image declaring more than --max-image-pixels, "
    "or a request's images more than --max-request-image-pixels together.",
    429: "The model's queue or a decode pool (images, big JSON bodies) is full: back off for "
    "Retry-After seconds.",
    431: "Request line and headers larger than --max-header-bytes (the connection is closed).",
    500: "An unexpected failure; the message is a request id the gateway logged.",
    503: "The model has no version ready, the gateway is shutting down, it has "
    "--max-connections open, or the process decoding a big JSON body died (retry).",
    504: "The deadline (x-request-timeout-ms, else --request-timeout-s) passed first.",
}

_ANY_STATUS = (401, 408, 431, 500, 503)  # auth, the connection layer, bugs: every operation
_LOOKUP = (400, 404, 503)  # a model, version or label named in the path
_INFERENCE = (413, 429, 504)  # a body that is decoded and run

_NUMBERS = {"type": "array", "items": {}}  # nested lists of numbers (or b64 objects)
_TENSOR_META = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string"},
        "datatype": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
}
_DURATION = {
    "type": "object",
    "required": ["count", "ns"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "ns": {"type": "integer", "minimum": 0},
    },
}
_PHASES = ("compute_input", "compute_infer", "compute_output")
_INFERENCE_STATS = ("success", "fail", "queue", *_PHASES, "cache_hit", "cache_miss")
_COUNT = {"type": "integer", "minimum": 0}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What was wrong."}},
    },
    "PredictRequest": {
        "type": "object",
        "description": "TF Serving: row format (`instances`) or columnar (`inputs`), "
        'raw pixels as nested lists or `{"b64": ...}` PNG/JPEG/raw bytes.',
        "properties": {
            "signature_name": {"type": "string"},
            "instances": {"type": "array"},
            "inputs": {},
        },
    },
    "PredictResponse": {
        "type": "object",
        "description": "`predictions` for row requests, `outputs` for columnar ones.",
        "properties": {"predictions": _NUMBERS, "outputs": {}},
    },
    "InferRequest": {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "items": _TENSOR_META},
            "outputs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
                },
            },
        },
    },
    "InferResponse": {
        "type": "object",
        "required": ["model_name", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": _TENSOR_META},
        },
    },
    "ClassifyResponse": {
        "type": "object",
        "required": ["model_spec", "predictions"],
        "properties": {
            "model_spec": {"type": "object"},
            "predictions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["label", "index", "score"],
                    "properties": {
                        "label": {"type": "string"},
                        "index": {"type": "integer"},
                        "score": {"type": "number"},
                    },
                },
            },
        },
    },
    "ModelStatus": {
        "type": "object",
        "required": ["model_version_status"],
        "properties": {"model_version_status": {"type": "array"}},
    },
    "ModelMetadata": {
        "type": "object",
        "required": ["model_spec", "metadata"],
        "properties": {"model_spec": {"type": "object"}, "metadata": {"type": "object"}},
    },
    "V2ModelMetadata": {
        "type": "object",
        "required": ["name", "platform", "inputs", "outputs"],
        "properties": {
            "name": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "platform": {"type": "string"},
            "inputs": {"type": "array", "items": _TENSOR_META},
            "outputs": {"type": "array", "items": _TENSOR_META},
            "parameters": {"type": "object"},
        },
    },
    "ModelStatistics": {
        "type": "object",
        "description": "Triton's statistics extension: per available version, what it served "
        "since it loaded (times in nanoseconds).",
        "required": ["model_stats"],
        "properties": {
            "model_stats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "name",
                        "version",
                        "last_inference",
                        "inference_count",
                        "execution_count",
                        "inference_stats",
                        "response_stats",
                        "batch_stats",
                        "memory_usage",
                    ],
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "string"},
                        "last_inference": {
                            **_COUNT,
                            "description": "Milliseconds since the epoch; 0: none yet.",
                        },
                        "inference_count": {**_COUNT, "description": "Rows inferred."},
                        "execution_count": {**_COUNT, "description": "Model executions."},
                        "inference_stats": {
                            "type": "object",
                            "required": list(_INFERENCE_STATS),
                            "properties": {key: _DURATION for key in _INFERENCE_STATS},
                        },
                        "response_stats": {"type": "object"},
                        "batch_stats": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["batch_size", *_PHASES],
                                "properties": {
                                    "batch_size": {"type": "integer", "minimum": 1},
                                    **{key: _DURATION for key in _PHASES},
                                },
                            },
                        },
                        "memory_usage": {"type": "array"},
                    },
                },
            }
        },
    },
    "Ready": {
        "type": "object",
        "required": ["ready"],
        "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
    },
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "ServerMetadata": {
        "type": "object",
        "required": ["name", "version", "extensions"],
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_BINARY = {"type": "string", "format": "binary"}
_TIMEOUT_HEADER = {
    "name": "x-request-timeout-ms",
    "in": "header",
    "required": False,
    "description": "Deadline in milliseconds (positive; capped at 10x --request-timeout-s).",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
_HEADER_LENGTH = {
    "name": "Inference-Header-Content-Length",
    "in": "header",
    "required": False,
    "description": "Binary tensor extension: the length of the JSON header that starts the body.",
    "schema": {"type": "integer", "minimum": 0},
}


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}}


def _operation_kind(path: str, method: str) -> str:
    if method == "post":
        return path.rsplit(":", 1)[-1] if ":" in path else "infer"
    if path == "/metrics":
        return "metrics"
    if path.endswith("/stats"):
        return "model_statistics" if "{name}" in path else "statistics"
    if path.endswith("/ready"):
        return "model_ready" if "/models/" in path else "server_ready"
    if path == "/v2/health/live":
        return "live"
    if path == "/v2":
        return "server_metadata"
    if path.startswith("/v2/models/"):
        return "v2_metadata"
    return "metadata" if path.endswith("/metadata") else "status"


def _describe(operation: dict[str, Any], kind: str) -> None:
    """Request body, parameters and responses of one operation, by its kind."""
    ok: dict[str, Any] = {"description": "Success."}
    statuses = list(_ANY_STATUS)
    if kind in ("predict", "infer", "classify_image"):
        statuses += [*_LOOKUP, *_INFERENCE]
        operation.setdefault("parameters", []).append(_TIMEOUT_HEADER)
    elif kind in ("status", "metadata", "v2_metadata", "model_ready", "model_statistics"):
        statuses += _LOOKUP
    if kind == "predict":
        example = operation.get("requestBody", {}).get("content", {}).get("application/json", {})
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/PredictRequest"},
                    **({"example": example["example"]} if "example" in example else {}),
                }
            },
        }
        ok["content"] = _json("PredictResponse")
    elif kind == "infer":
        operation["parameters"].append(_HEADER_LENGTH)
        operation["requestBody"] = {
            "required": True,
            "content": {
                **_json("InferRequest"),
                "application/octet-stream": {"schema": _BINARY},
            },
        }
        ok["content"] = {**_json("InferResponse"), "application/octet-stream": {"schema": _BINARY}}
    elif kind == "classify_image":
        operation["requestBody"] = {
            "required": True,
            "content": {
                "image/png": {"schema": _BINARY},
                "image/jpeg": {"schema": _BINARY},
                "application/octet-stream": {"schema": _BINARY},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {"file": _BINARY},
                    }
                },
            },
        }
        ok["content"] = _json("ClassifyResponse")
    elif kind == "metrics":
        ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
    elif kind == "status":
        ok["content"] = _json("ModelStatus")
    elif kind == "metadata":
        ok["content"] = _json("ModelMetadata")
    elif kind == "v2_metadata":
        ok["content"] = _json("V2ModelMetadata")
    elif kind in ("statistics", "model_statistics"):
        ok["content"] = _json("ModelStatistics")
    elif kind in ("model_ready", "server_ready"):
        ok["content"] = _json("Ready")
    elif kind == "live":
        ok["content"] = _json("Live")
    elif kind == "server_metadata":
        ok["content"] = _json("ServerMetadata")
    responses: dict[str, Any] = {"200": ok}
    for status in sorted(set(statuses)):
        responses[str(status)] = {
            "description": ERROR_STATUSES[status],
            "content": {"application/json": {"schema": ERROR_REF}},
        }
        if status == 429:
            responses["429"]["headers"] = {
                "Retry-After": {
                    "description": "Seconds to wait before retrying.",
                    "schema": {"type": "integer", "minimum": 1},
                }
            }
    if kind in ("model_ready", "server_ready"):  # not ready: 503 with the readiness body
        responses["503"] = {"description": "Not ready.", "content": _json("Ready")}
    operation["responses"] = responses


#: Path parameter examples: the model name this project trains by default, so that "Try it out"
#: in /docs (and generated tests) reach a model.
PATH_EXAMPLES = {"name": "lenet", "version": "1", "label": "stable"}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the gateway's document (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                for parameter in operation.get("parameters", []):
                    if parameter["in"] == "path" and parameter["name"] in PATH_EXAMPLES:
                        parameter["example"] = PATH_EXAMPLES[parameter["name"]]
                _describe(operation, _operation_kind(path, method))
        components = schema.setdefault("components", {})
        components["schemas"] = SCHEMAS
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def path_parameters(path: str) -> set[str]:
    """``{"name", "version"}`` for ``/v2/models/{name}/versions/{version}/infer``."""
    return set(re.findall(r"{(\w+)}", path))
