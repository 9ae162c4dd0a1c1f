"""What each request did: request ids on every protocol, the access log, connection refusals.

Against real gateway processes (``python -m serving``) with ``--access-log PATH``.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from clients import v2_grpc, wire
from clients.codec import ndarray_to_tensor_proto
from serving.observe import (
    MAX_REQUEST_ID_CHARS,
    AccessLog,
    RequestIdFilter,
    RequestRecord,
    accept_request_id,
    current,
    new_request_id,
)
from tests.metrics_text import metric_value
from tests.serving.conftest import MODEL
from tests.serving.serving_harness import GatewayProcess, predict_call, wait_until
from tests.tiny_models import sample_images

LOG_FIELDS = {
    "time", "id", "peer", "protocol", "route", "model", "version", "status", "code", "rows",
    "bytes_in", "bytes_out", "queue_ms", "batch", "compute_ms", "total_ms",
}  # fmt: skip


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for_lines(path: Path, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(_lines(path)) >= count, 10, what=f"{count} access-log lines")
    time.sleep(0.2)  # nothing more should come
    return _lines(path)


@pytest.fixture(scope="module")
def logged(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A gateway that logs every request to a file."""
    log = tmp_path_factory.mktemp("log") / "access.jsonl"
    process = GatewayProcess(tiny_repo, "--access-log", str(log), "--access-log-sample", "1.0")
    try:
        yield process, log
    finally:
        process.stop()


def _v2_binary(images: np.ndarray) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {"inputs": [{"name": "image", "shape": list(images.shape), "datatype": "UINT8",
                     "parameters": {"binary_data_size": images.nbytes}}]}
    ).encode()  # fmt: skip
    return header + images.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def _png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image[:, :, 0]).save(out, format="PNG")
    return out.getvalue()


def test_every_protocol_echoes_the_request_id_and_logs_one_line_per_request(logged: Any) -> None:
    process, log = logged
    before = len(_lines(log))
    images = sample_images(3, seed=5)
    url = process.http_url
    sent: dict[str, str] = {}  # request id -> protocol it was sent on

    def rest(rid: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        answer = httpx.request(method, url + path, headers={"x-request-id": rid}, timeout=10, **kwargs)  # fmt: skip
        assert answer.headers["x-request-id"] == rid, (path, answer.headers)
        sent[rid] = path
        return answer

    assert rest("rest-1", "POST", f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()}).status_code == 200  # fmt: skip
    body, headers = _v2_binary(images)
    answer = httpx.post(
        url + f"/v2/models/{MODEL}/infer", content=body,
        headers={**headers, "x-request-id": "v2-bin-1"}, timeout=10,
    )  # fmt: skip
    assert answer.status_code == 200 and answer.headers["x-request-id"] == "v2-bin-1"
    sent["v2-bin-1"] = "infer"
    v2_json = {"inputs": [{"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8",
                           "data": images[:1].ravel().tolist()}]}  # fmt: skip
    answer = rest("v2-json-1", "POST", f"/v2/models/{MODEL}/infer", json=v2_json)
    assert answer.json()["id"] == "v2-json-1"  # V2's id: the request's when the body has none
    answer = rest("v2-json-2", "POST", f"/v2/models/{MODEL}/infer", json={**v2_json, "id": "mine"})  # fmt: skip
    assert answer.json()["id"] == "mine"  # the client's own V2 id is echoed as V2 says
    assert rest("image-1", "POST", f"/v1/models/{MODEL}:classify_image", content=_png(images[0])).status_code == 200  # fmt: skip
    assert rest("meta-1", "GET", f"/v1/models/{MODEL}/metadata").status_code == 200
    missing = rest("missing-1", "POST", "/v1/models/nope:predict", json={"instances": [[1]]})
    assert missing.status_code == 404
    assert missing.json() == {"error": missing.json()["error"], "id": "missing-1"}

    # Without an id, one is made and returned.
    made = httpx.get(url + "/v2/health/ready", timeout=10).headers["x-request-id"]
    assert made and made != "missing-1"
    sent[made] = "ready"
    # A client id that could not be echoed safely is replaced.
    for hostile in ("x" * (MAX_REQUEST_ID_CHARS + 1), "caf\u00e9".encode()):
        answer = httpx.get(url + "/v2/health/live", headers={"x-request-id": hostile}, timeout=10)
        assert answer.headers["x-request-id"] not in ("", hostile, "caf\u00e9")
        sent[answer.headers["x-request-id"]] = "live"

    with grpc.insecure_channel(process.grpc_target) as channel:
        request = wire.PredictRequest()
        request.model_spec.name = MODEL
        request.inputs["image"].CopyFrom(ndarray_to_tensor_proto(images))
        _, call = predict_call(channel).with_call(request, metadata=(("x-request-id", "grpc-1"),))
        assert dict(call.trailing_metadata())["x-request-id"] == "grpc-1"
        sent["grpc-1"] = "Predict"
        infer = channel.unary_unary(
            v2_grpc.MODEL_INFER_METHOD,
            request_serializer=v2_grpc.ModelInferRequest.SerializeToString,
            response_deserializer=v2_grpc.ModelInferResponse.FromString,
        )
        v2_request = v2_grpc.ModelInferRequest(model_name=MODEL)
        v2_request.inputs.add(name="image", datatype="UINT8", shape=list(images.shape))
        v2_request.raw_input_contents.append(images.tobytes())
        response, call = infer.with_call(v2_request, metadata=(("x-request-id", "v2-grpc-1"),))
        assert dict(call.trailing_metadata())["x-request-id"] == "v2-grpc-1"
        assert response.id == "v2-grpc-1"
        sent["v2-grpc-1"] = "ModelInfer"
        with pytest.raises(grpc.RpcError) as refused:
            bad = wire.PredictRequest()
            bad.model_spec.name = "nope"
            predict_call(channel).with_call(bad, metadata=(("x-request-id", "grpc-404"),))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        assert dict(refused.value.trailing_metadata())["x-request-id"] == "grpc-404"
        sent["grpc-404"] = "Predict"

    lines = _wait_for_lines(log, before + len(sent))[before:]
    assert len(lines) == len(sent), lines
    by_id = {line["id"]: line for line in lines}
    assert set(by_id) == set(sent)
    for line in lines:
        assert set(line) >= LOG_FIELDS, line
    predict = by_id["rest-1"]
    assert predict["protocol"] == "rest" and predict["route"] == "predict"
    assert (predict["model"], predict["version"], predict["status"], predict["code"]) == (MODEL, "2", 200, "OK")  # fmt: skip
    assert predict["rows"] == 3 and predict["batch"] >= 3 and predict["bytes_in"] > 0
    assert predict["bytes_out"] > 0 and predict["total_ms"] >= predict["compute_ms"] > 0
    assert predict["peer"].startswith("127.0.0.1:")
    assert by_id["v2-bin-1"]["protocol"] == "v2" and by_id["v2-bin-1"]["rows"] == 3
    assert by_id["image-1"]["protocol"] == "image" or by_id["image-1"]["route"].endswith(":classify_image")  # fmt: skip
    assert by_id["meta-1"]["route"] == "/v1/models/{name}/metadata"
    assert by_id["missing-1"]["status"] == 404 and by_id["missing-1"]["code"] == "NOT_FOUND"
    assert by_id["missing-1"]["error"]
    grpc_line = by_id["grpc-1"]
    assert (grpc_line["protocol"], grpc_line["route"], grpc_line["status"]) == ("grpc", "Predict", 200)  # fmt: skip
    assert grpc_line["rows"] == 3 and grpc_line["bytes_out"] > 0 and grpc_line["peer"]
    assert by_id["v2-grpc-1"]["protocol"] == "v2-grpc"
    assert (by_id["grpc-404"]["status"], by_id["grpc-404"]["code"]) == (404, "NOT_FOUND")


def test_sampling_zero_logs_errors_only_and_refusals_are_counted_and_logged(
    tiny_repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "access.jsonl"
    process = GatewayProcess(
        tiny_repo, "--access-log", str(log), "--access-log-sample", "0",
        "--max-header-bytes", "4096", "--max-connections", "2",
    )  # fmt: skip
    try:
        url = process.http_url
        images = sample_images(1)
        for _ in range(5):
            ok = httpx.post(url + f"/v1/models/{MODEL}:predict", json={"instances": images.tolist()}, timeout=10)  # fmt: skip
            assert ok.status_code == 200
        bad = httpx.post(url + f"/v1/models/{MODEL}:predict", json={"instances": [[1, 2]]}, timeout=10)  # fmt: skip
        assert bad.status_code == 400
        # 431: a head over the limit.
        big = httpx.get(url + "/v2/health/live", headers={"x-filler": "a" * 8000}, timeout=10)
        assert big.status_code == 431
        assert json.loads(big.content)["id"] == big.headers["x-request-id"]
        # 503: a third connection while two are open.
        host, port = url.removeprefix("http://").rsplit(":", 1)
        held = [socket.create_connection((host, int(port))) for _ in range(2)]
        try:
            time.sleep(0.3)
            with socket.create_connection((host, int(port))) as third:
                third.settimeout(5)
                answer = third.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503"), answer
        finally:
            for conn in held:
                conn.close()
        lines = _wait_for_lines(log, 3)
        assert sorted(line["status"] for line in lines) == [400, 431, 503], lines
        time.sleep(0.3)  # the held connections' close is seen
        text = httpx.get(url + "/metrics", timeout=10).text
        for status in ("431", "503"):
            refused = metric_value(
                text, "serving_connection_refusals_total", protocol="http", status=status
            )
            assert refused == 1, (status, text)
    finally:
        process.stop()


# --- the parts, on their own ------------------------------------------------------------------
def test_request_ids_are_unique_and_hostile_ones_are_replaced() -> None:
    made = {new_request_id() for _ in range(10_000)}
    assert len(made) == 10_000
    assert accept_request_id("abc-123") == "abc-123"
    for hostile in (None, "", "x" * (MAX_REQUEST_ID_CHARS + 1), "a\tb", "\u00e9t\u00e9", "a\x00"):
        replaced = accept_request_id(hostile)
        assert replaced != hostile and replaced.isascii() and replaced.isprintable()


def test_a_full_access_log_drops_lines_and_counts_them_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(str(path), 1.0, capacity=4)
    submitted = 2000
    start = time.perf_counter()
    for i in range(submitted):
        record = RequestRecord(f"r{i}", "rest", "predict")
        record.http_status = 200
        log.submit(record)
    elapsed = time.perf_counter() - start
    log.close()
    written = _lines(path)
    assert log.dropped > 0
    assert len(written) + log.dropped == submitted
    assert elapsed < 1.0  # 2,000 submits: microseconds each, never a wait for the disk
    assert [line["id"] for line in written] == sorted(
        (line["id"] for line in written), key=lambda rid: int(rid[1:])
    )


def test_a_line_orjson_refuses_is_still_written(tmp_path: Path) -> None:
    path = tmp_path / "access.jsonl"
    log = AccessLog(str(path), 1.0)
    record = RequestRecord("r-1", "http", "/v1/models/\udcff", None)  # a lone surrogate
    record.http_status = 404
    log.submit(record)
    log.close()
    (line,) = _lines(path)
    assert line["id"] == "r-1" and line["route"] == "/v1/models/\udcff"


def test_log_lines_about_a_request_name_its_id(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    logger = logging.getLogger("serving.test_observe")
    handler = logging.StreamHandler(io.StringIO())
    handler.addFilter(RequestIdFilter())
    logger.addHandler(handler)
    try:
        token = current.set(RequestRecord("id-with-%s", "rest", "predict"))
        try:
            logger.warning("decoding failed: %s", "boom")
        finally:
            current.reset(token)
        logger.warning("outside a request")
    finally:
        logger.removeHandler(handler)
    assert isinstance(handler.stream, io.StringIO)
    text = handler.stream.getvalue().splitlines()
    assert text == ["decoding failed: boom [request id-with-%s]", "outside a request"]


def test_records_are_timed_only_when_the_access_log_or_a_trace_reads_them(tmp_path: Path) -> None:
    """With everything off a request gets its id and no clock readings: the batcher leaves its
    record alone (no batch timing). With the access log on, every record is timed and the batch
    it ran in is noted on it."""
    import asyncio

    from serving.batching import BatchingConfig, DynamicBatcher
    from serving.observe import Observer
    from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
    from tests.tiny_models import linear_classifier, write_version

    quiet = Observer()
    record = quiet.begin("rest", "predict", "client-id-1", make_current=False)
    assert (record.id, record.timed, record.start_ns) == ("client-id-1", False, 0)
    for hostile in ("", "x" * (MAX_REQUEST_ID_CHARS + 1), "a\tb", "\u00e9t\u00e9"):
        replaced = quiet.begin("rest", "predict", hostile, make_current=False).id
        assert replaced != hostile and replaced.isascii() and replaced.isprintable()

    log = AccessLog(str(tmp_path / "access.jsonl"), 0.0)
    logged = Observer(log)
    timed = logged.begin("rest", "predict", None, make_current=False)
    assert timed.timed and timed.start_ns > 0

    write_version(tmp_path, "tiny", 1, linear_classifier())
    runtime = OnnxRuntime(tmp_path / "tiny" / "1", OnnxOptions(device="cpu"))
    batcher = DynamicBatcher(runtime, "tiny", 1, BatchingConfig(batch_timeout_us=0))

    async def serve(served: RequestRecord) -> None:
        current.set(served)  # the task's record, as a transport sets it
        await batcher.infer({"image": sample_images(1)}, time.monotonic() + 30)

    async def both() -> None:  # one loop: the batcher's scheduler lives on the first one
        await asyncio.create_task(serve(record))
        await asyncio.create_task(serve(timed))

    asyncio.run(both())
    batcher.close()
    log.close()
    assert (record.enqueued_ns, record.compute_start_ns, record.batch) == (0, 0, None)
    assert timed.enqueued_ns and timed.compute_start_ns >= timed.enqueued_ns
    assert timed.batch is not None and timed.batch.rows == 1
