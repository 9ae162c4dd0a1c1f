"""What the client tests need to talk to the real gateway (``tests.serving.serving_harness``):
the transports, a client's target for each, the ground truth, and a way to fill a gateway's queue.

The gateways themselves are fixtures in conftest.py, each set up so that one kind of answer is
real and deterministic: ``gateway`` (model ``tiny``, versions 1 and 2, labels stable=1 and
canary=2), ``busy_gateway`` (model ``slow``: one request computing and one waiting fill it),
``troubled_gateway`` (``slow`` past its deadline, ``broken`` with no version ready) and
``guarded_gateway`` (``tiny`` behind an API key).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from tests.metrics_text import metric_value
from tests.serving.serving_harness import RunningGateway, model_busy
from tests.tiny_models import reference_predict

MODEL = "tiny"
SLOW = "slow"
BROKEN = "broken"
API_KEY = "k-123"
#: how the client is told to speak each transport; "rest-row" is TF Serving REST's row format.
TRANSPORTS = ["rest", "rest-row", "v2", "grpc"]
#: the gateway's ``protocol`` label (serving_requests_total) for each transport.
PROTOCOL_LABEL = {"rest": "rest", "rest-row": "rest", "v2": "v2", "grpc": "grpc"}
#: rows of each request that fills ``busy_gateway`` (``full_queue``): about a second of the slow
#: model's compute on one core, far longer than a refused request takes.
HOLDING_ROWS = 4


def client_options(gateway: RunningGateway, transport: str) -> tuple[str, dict[str, Any]]:
    """Target and keyword arguments for a ``Client`` speaking ``transport`` to ``gateway``."""
    if transport == "grpc":
        return f"grpc://{gateway.grpc_target}", {}
    if transport == "v2":
        return gateway.http_url, {"protocol": "v2"}
    if transport == "rest-row":
        return gateway.http_url, {"rest_format": "row"}
    return gateway.http_url, {}


def reference(repository: Path, model: str, version: int, images: np.ndarray) -> np.ndarray:
    """The model's answer from ONNX Runtime in this process: what the gateway must return."""
    return reference_predict(repository / model / str(version) / "model.onnx", images)


def requests_counted(gateway: RunningGateway, transport: str, status: str) -> float:
    """Requests the gateway answered with ``status`` over ``transport``'s protocol, all models."""
    text = gateway.metrics_text()
    return metric_value(
        text, "serving_requests_total", protocol=PROTOCOL_LABEL[transport], status=status
    )


def full_queue(busy_gateway: RunningGateway) -> AbstractContextManager[None]:
    """While inside, ``busy_gateway`` refuses every predict with RESOURCE_EXHAUSTED: one request
    of ``HOLDING_ROWS`` images computes and one waits in its one-request queue. On exit both have
    been answered."""
    return model_busy(busy_gateway, SLOW, requests=2, rows=HOLDING_ROWS)
