"""The OpenAPI document tells the truth: schemathesis generates requests for every operation from
``/openapi.json`` (valid and invalid ones, bounded in number) and sends them to a running gateway;
no answer may be a 5xx, and every answer's status, content type, headers and body must be what
the document says for that operation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from serving.gateway import Gateway
from serving.rest import routes
from tests.serving.serving_harness import RunningGateway, gateway_settings
from tests.tiny_models import lenet_like, write_models_config, write_version

MODEL = "lenet"  # the name the document's examples use, so generated requests reach a model
TIMEOUT_HEADER = "x-request-timeout-ms"


def no_server_fault(ctx: Any, response: Any, case: Any) -> bool | None:
    """No 5xx, except the documented 504 for a deadline the client set shorter than any answer
    takes (generated values go down to 5e-324 ms)."""
    headers = {k.lower(): v for k, v in (case.headers or {}).items()}
    if response.status_code == 504 and float(headers.get(TIMEOUT_HEADER, "inf")) < 100:
        return None
    return not_a_server_error(ctx, response, case)


CHECKS = [
    no_server_fault,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def openapi_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    root: Path = tmp_path_factory.mktemp("openapi")
    write_version(root, MODEL, 1, lenet_like())
    write_models_config(root, [MODEL], labels={MODEL: {"stable": 1}})
    running = RunningGateway(
        gateway_settings(root, max_body_bytes=1024 * 1024, max_request_batch=8)
    ).start()
    yield running
    running.stop()


# The document as the gateway builds it (it does not depend on the models), so that the cases
# are generated at collection; the test below checks that the running gateway serves the same.
DOCUMENT = Gateway(gateway_settings(Path("no-repository-needed"))).app.openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


@schema.parametrize()
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same requests on every run: a failure here is reproducible
)
def test_every_operation_conforms(case: Any, openapi_gateway: RunningGateway) -> None:
    case.call_and_validate(base_url=openapi_gateway.http_url, checks=CHECKS)


def test_document_declares_errors_and_metrics_text(openapi_gateway: RunningGateway) -> None:
    document = httpx.get(f"{openapi_gateway.http_url}/openapi.json", timeout=10).json()
    assert document == DOCUMENT
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    assert len(operations) >= 20
    for operation in operations:
        responses = operation["responses"]
        assert "422" not in responses  # FastAPI's default; the gateway answers 400
        assert {"401", "408", "431", "500", "503"} <= set(responses)
        for status, response in responses.items():
            if status.startswith(("4", "5")) and status != "503":
                schema_ref = response["content"]["application/json"]["schema"]
                assert schema_ref == {"$ref": "#/components/schemas/Error"}
    predict = document["paths"]["/v1/models/{name}:predict"]["post"]["responses"]
    assert {"400", "404", "413", "429", "503", "504"} <= set(predict)
    assert "Retry-After" in predict["429"]["headers"]
    metrics = document["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]


def test_the_front_door_serves_exactly_the_documented_hot_routes() -> None:
    """One route table: the POST :predict and /infer paths in the document are the templates the
    front door compiles, and each compiled matcher takes its own template's parameters."""
    documented = {
        path
        for path, operations in DOCUMENT["paths"].items()
        if "post" in operations and path.endswith((":predict", "/infer"))
    }
    assert documented == set(routes.PREDICT.templates) | set(routes.INFER.templates)
    for route in (routes.PREDICT, routes.INFER):
        for template, matcher in zip(route.templates, route.matchers(), strict=True):
            path = template.format(name="m-1.x", version="7", label="canary")
            match = matcher.fullmatch(path)
            assert match is not None, template
            expected = {"name": "m-1.x", "version": "7", "label": "canary"}
            assert match.groupdict() == {key: expected[key] for key in match.groupdict()}
    assert not routes.PREDICT.matchers()[0].match("/v1/models/a:b:predict")  # v1 names have no ':'
