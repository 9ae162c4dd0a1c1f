"""Locust users for the model servers: TF Serving REST JSON, KServe V2, images and gRPC.

Run by ``python -m benchmarks run`` (which prepares everything this file reads); usable directly
with ``BENCH_CONFIG=reports/x/bench_config.json locust -f benchmarks/locustfile.py RestUser``.

Rules this file keeps:

- No tensorflow, requests or urllib3 imports: gevent's monkey-patching breaks on them (see
  docs/ARCHITECTURE.md, known traps). The test images, labels and offline predictions come from an
  ``.npz`` the parent process wrote; the config is a JSON file named by ``$BENCH_CONFIG``.
- Every request body is encoded once per worker process, before the first request, from real
  test images; a user then cycles through them starting at its own offset.
- Every answer is checked: the served class of each image is recorded against the image's index,
  and the parent turns those records into accuracy, macro P/R/F1, a confusion matrix and the
  agreement with the offline predictions.
- Latency is also recorded with ``time.perf_counter`` per request, because Locust rounds response
  times to whole milliseconds below 100 ms. Each worker writes its samples to its own file.

Size: Locust loads its users from the one file given with ``-f`` and imports it in every
worker under gevent, so the users, their body encoding and their answer records stay together.
"""

from __future__ import annotations

# grpc must learn about gevent before any channel exists, or its calls block the whole worker.
import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()

import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import grpc  # noqa: E402
import numpy as np  # noqa: E402
from locust import FastHttpUser, User, constant, events, task  # noqa: E402
from locust.runners import WorkerRunner  # noqa: E402

from benchmarks import answers  # noqa: E402
from clients.v2_grpc import MODEL_INFER_METHOD, ModelInferResponse  # noqa: E402
from clients.wire import PREDICT_METHOD, PredictResponse  # noqa: E402

CONFIG_ENV = "BENCH_CONFIG"
IMAGE_PATH = "/v1/models/{model}{suffix}:classify_image?top_k=1"


def load_config() -> dict[str, Any]:
    """The run's configuration written by the parent (``benchmarks.run``)."""
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"${CONFIG_ENV} must name the JSON config written by benchmarks.run")
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- recording answers


class Recorder:
    """Per-process samples: one row per request, one row per image answered."""

    def __init__(self) -> None:
        self.test_start: float | None = None
        self.end_times: list[float] = []  # wall clock (comparable across processes)
        self.latencies: list[float] = []  # perf_counter seconds
        self.image_counts: list[int] = []
        self.successes: list[bool] = []
        self.image_indices: list[np.ndarray] = []
        self.served_classes: list[np.ndarray] = []
        self.answer_errors = 0

    def record(
        self,
        latency: float,
        indices: np.ndarray,
        served: np.ndarray | None,
    ) -> None:
        self.end_times.append(time.time())
        self.latencies.append(latency)
        self.image_counts.append(len(indices))
        self.successes.append(served is not None)
        if served is not None:
            self.image_indices.append(indices)
            self.served_classes.append(served)

    def write(self, directory: str) -> None:
        """Save to ``samples-<pid>.npz``; called at stop and at exit, the last call wins."""
        if not self.latencies:
            return  # the master of a multi-process run sends no requests
        Path(directory).mkdir(parents=True, exist_ok=True)
        empty = np.zeros(0, np.int64)
        np.savez(
            Path(directory) / f"samples-{os.getpid()}.npz",
            test_start=np.float64(self.test_start or 0.0),
            end_time=np.asarray(self.end_times, np.float64),
            latency=np.asarray(self.latencies, np.float64),
            images=np.asarray(self.image_counts, np.int64),
            success=np.asarray(self.successes, bool),
            image_index=np.concatenate(self.image_indices) if self.image_indices else empty,
            served=np.concatenate(self.served_classes) if self.served_classes else empty,
            answer_errors=np.int64(self.answer_errors),
        )


RECORDER = Recorder()


@events.test_start.add_listener
def _on_test_start(environment: Any, **_: Any) -> None:
    RECORDER.test_start = time.time()
    config = load_config()
    warmup = float(config.get("warmup_s", 0))
    if warmup > 0:
        # Locust has no warm-up phase: its statistics restart once the warm-up is over. Every
        # process resets, so a worker's not yet reported pre-warm-up counts are dropped too.
        gevent.spawn_later(warmup, environment.stats.reset_all)
    duration = config.get("duration_s")
    if duration and not isinstance(environment.runner, WorkerRunner):
        # Locust's --run-time clock starts before the test does (a master first waits for its
        # workers), so the run is ended from here, warm-up + duration after the real start;
        # --run-time stays only as a safety net.
        gevent.spawn_later(warmup + float(duration), environment.runner.quit)


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    RECORDER.write(load_config()["samples_dir"])


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    RECORDER.write(load_config()["samples_dir"])


# --------------------------------------------------------------------------- payloads


@dataclass(frozen=True)
class Payload:
    """One pre-encoded request and the test-set indices of the images it carries."""

    body: bytes
    indices: np.ndarray


class Workload:
    """Test data and the pre-encoded requests of this worker process."""

    def __init__(self, config: dict[str, Any]) -> None:
        data = np.load(config["data_path"])
        self.config = config
        self.images: np.ndarray = data["images"]
        self.model_to_dataset: np.ndarray = data["model_to_dataset"]
        per_request = int(config["images_per_request"])
        count = len(self.images)
        # Consecutive slices of the sample, wrapping around, so every image is sent.
        batches = max(1, count // per_request)
        self.batches = [
            np.arange(b * per_request, (b + 1) * per_request) % count for b in range(batches)
        ]

    def served_classes(self, model_outputs: np.ndarray) -> np.ndarray:
        """Dataset class of each answer (by the model's class names); -1 when it has none."""
        return answers.served_classes(model_outputs, self.model_to_dataset)


_WORKLOAD: Workload | None = None
_PAYLOADS: dict[str, list[Payload]] = {}
_V2_HEADERS: dict[str, dict[str, str]] = {}


def workload() -> Workload:
    """The process's workload, loaded on first use (after a fork, in each worker)."""
    global _WORKLOAD
    if _WORKLOAD is None:
        _WORKLOAD = Workload(load_config())
    return _WORKLOAD


def payloads(kind: str, encode: Any) -> list[Payload]:
    """Encode every request body once per process; ``encode(batch) -> bytes``."""
    if kind not in _PAYLOADS:
        work = workload()
        _PAYLOADS[kind] = [Payload(encode(work.images[idx]), idx) for idx in work.batches]
    return _PAYLOADS[kind]


def model_path_suffix(config: dict[str, Any], v2: bool = False) -> str:
    """``/versions/N`` or (TF Serving REST only) ``/labels/L`` after the model name."""
    return answers.model_path_suffix(config.get("version"), config.get("label"), v2)


class CheckedUser:
    """Shared per-user state: where in the payload list this user starts."""

    payload_list: list[Payload]
    position: int

    def start_cycle(self, payload_list: list[Payload]) -> None:
        self.payload_list = payload_list
        self.position = random.randrange(len(payload_list))

    def next_payload(self) -> Payload:
        payload = self.payload_list[self.position]
        self.position = (self.position + 1) % len(self.payload_list)
        return payload


def _check(response_ok: bool, parse: Any) -> tuple[np.ndarray | None, str | None]:
    """Parse an answer into served classes; an unparsable answer is a failure, not a guess."""
    if not response_ok:
        return None, None
    try:
        return workload().served_classes(parse()), None
    except Exception as error:  # any malformed answer counts, whatever broke
        RECORDER.answer_errors += 1
        return None, f"unreadable answer: {error!r}"


# --------------------------------------------------------------------------- HTTP users


class _HttpModelUser(FastHttpUser, CheckedUser):
    """A FastHttpUser posting pre-encoded bodies and checking every answer."""

    abstract = True
    wait_time = constant(0)
    request_name = "predict"
    url = ""
    headers: dict[str, str] = {}  # noqa: RUF012 (overwritten per subclass, never mutated)

    def encode(self, batch: np.ndarray) -> bytes:
        raise NotImplementedError

    def parse(self, response: Any) -> np.ndarray:
        raise NotImplementedError

    @task
    def predict(self) -> None:
        payload = self.next_payload()
        started = time.perf_counter()
        with self.client.post(
            self.url,
            data=payload.body,  # type: ignore[arg-type]  # bytes work; the stub says str
            headers=self.headers,
            name=self.request_name,
            catch_response=True,
        ) as response:
            latency = time.perf_counter() - started
            ok = response.status_code == 200
            served, problem = _check(ok, lambda: self.parse(response))
            if not ok:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
            elif problem:
                response.failure(problem)
            RECORDER.record(latency, payload.indices, served)


class RestUser(_HttpModelUser):
    """TF Serving REST ``:predict`` with JSON: row (``instances``) or columnar (``inputs``)."""

    def on_start(self) -> None:
        config = load_config()
        self.columnar = config.get("payload_format") == "columnar"
        self.output_name = config.get("output_name", "probabilities")
        self.url = f"/v1/models/{config['model']}{model_path_suffix(config)}:predict"
        self.headers = {"Content-Type": "application/json"}
        self.request_name = f"rest:{config['model']}:predict"
        self.start_cycle(payloads(f"rest-{self.columnar}", self.encode))

    def encode(self, batch: np.ndarray) -> bytes:
        return answers.encode_rest(batch, self.columnar)

    def parse(self, response: Any) -> np.ndarray:
        return answers.parse_rest(response.content, self.output_name)


class V2User(_HttpModelUser):
    """KServe V2 ``/infer``, binary tensor extension by default (``payload_format=json`` too)."""

    def on_start(self) -> None:
        config = load_config()
        self.binary = config.get("payload_format", "binary") != "json"
        self.input_name = config.get("input_name", "image")
        self.output_name = config.get("output_name", "probabilities")
        self.url = f"/v2/models/{config['model']}{model_path_suffix(config, v2=True)}/infer"
        self.request_name = f"v2:{config['model']}:infer"
        kind = f"v2-{self.binary}"
        self.start_cycle(payloads(kind, self.encode))
        self.headers = _V2_HEADERS[kind]

    def encode(self, batch: np.ndarray) -> bytes:
        body, headers = answers.encode_v2(batch, self.input_name, self.output_name, self.binary)
        # All bodies of a run share one shape, so their JSON headers have one length.
        _V2_HEADERS[f"v2-{self.binary}"] = headers
        return body

    def parse(self, response: Any) -> np.ndarray:
        length = response.headers.get(answers.v2_wire.HEADER_LENGTH)
        return answers.parse_v2(response.content, length, self.output_name)


class ImageUser(_HttpModelUser):
    """The gateway's image endpoint: one PNG file per request, the top-1 answer checked."""

    def on_start(self) -> None:
        config = load_config()
        template = config.get("image_path", IMAGE_PATH)
        self.url = template.format(model=config["model"], suffix=model_path_suffix(config))
        self.request_name = f"image:{config['model']}:classify_image"
        self.headers = {"Content-Type": "image/png"}
        self.start_cycle(payloads("image", self.encode))

    def encode(self, batch: np.ndarray) -> bytes:
        from PIL import Image

        if len(batch) != 1:
            raise ValueError("the image endpoint takes one image per request")
        image = batch[0]
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
        return buffer.getvalue()

    def parse(self, response: Any) -> np.ndarray:
        # {"predictions": [{"label", "index", "score"}, ...]}, best first, for the one image.
        best = json.loads(response.content)["predictions"][0]
        scores = np.zeros((1, len(workload().model_to_dataset)), np.float32)
        scores[0, int(best["index"])] = 1.0
        return scores


# --------------------------------------------------------------------------- gRPC user


class LocustInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Reports every unary call to Locust's request event, so gRPC shows in its statistics."""

    def __init__(self, environment: Any) -> None:
        self.environment = environment

    def intercept_unary_unary(
        self, continuation: Any, client_call_details: Any, request: Any
    ) -> Any:
        exception: Exception | None = None
        response_length = 0
        started = time.perf_counter()
        call = continuation(client_call_details, request)
        try:
            response_length = call.result().ByteSize()
        except grpc.RpcError as error:
            exception = error
        self.environment.events.request.fire(
            request_type="grpc",
            name=client_call_details.method,
            response_time=(time.perf_counter() - started) * 1000.0,
            response_length=response_length,
            response=call,
            context=None,
            exception=exception,
        )
        return call


def grpc_address(host: str) -> str:
    """``grpc://h:p`` or ``h:p`` -> ``h:p``; ``http://h:8501`` -> ``h:8500`` (TF Serving's pair)."""
    if host.startswith(("http://", "https://")):
        address = host.split("://", 1)[1].rstrip("/")
        hostname, _, port = address.rpartition(":")
        return f"{hostname}:8500" if port == "8501" else address
    return host.removeprefix("grpc://").rstrip("/")


class GrpcUser(User, CheckedUser):
    """TF Serving ``PredictionService/Predict`` over gRPC with pre-serialised requests."""

    wait_time = constant(0)
    #: the method, its reply and the payload kind (``V2GrpcUser`` changes these)
    method = PREDICT_METHOD
    response_type: Any = PredictResponse
    kind = "grpc"

    def on_start(self) -> None:
        config = load_config()
        self.input_name = config.get("input_name", "image")
        self.output_name = config.get("output_name", "probabilities")
        self.model = config["model"]
        self.version = config.get("version")
        self.label = config.get("label")
        channel = grpc.insecure_channel(
            config.get("grpc_target") or grpc_address(self.host or config["target"]),
            options=[
                ("grpc.max_receive_message_length", 256 << 20),
                ("grpc.max_send_message_length", 256 << 20),
            ],
        )
        self.channel = channel
        intercepted = grpc.intercept_channel(channel, LocustInterceptor(self.environment))
        # Bodies are serialised once; the stub sends the bytes as they are.
        self.predict_call = intercepted.unary_unary(
            self.method,
            request_serializer=None,
            response_deserializer=self.response_type.FromString,
        )
        self.timeout = float(config.get("grpc_timeout_s", 30.0))
        self.start_cycle(payloads(self.kind, self.encode))

    def on_stop(self) -> None:
        self.channel.close()

    def encode(self, batch: np.ndarray) -> bytes:
        return answers.encode_grpc(batch, self.model, self.version, self.label, self.input_name)

    @task
    def predict(self) -> None:
        payload = self.next_payload()
        started = time.perf_counter()
        try:
            response = self.predict_call(payload.body, timeout=self.timeout)
        except grpc.RpcError:
            # The interceptor already reported the failure to Locust.
            RECORDER.record(time.perf_counter() - started, payload.indices, None)
            return
        latency = time.perf_counter() - started
        served, _ = _check(True, lambda: self.parse(response))
        RECORDER.record(latency, payload.indices, served)

    def parse(self, response: Any) -> np.ndarray:
        return answers.parse_grpc(response, self.output_name)


class V2GrpcUser(GrpcUser):
    """KServe V2 ``GRPCInferenceService/ModelInfer`` with pre-serialised raw-tensor requests."""

    method = MODEL_INFER_METHOD
    response_type = ModelInferResponse
    kind = "v2-grpc"

    def encode(self, batch: np.ndarray) -> bytes:
        return answers.encode_v2_grpc(batch, self.model, self.version, self.input_name)

    def parse(self, response: Any) -> np.ndarray:
        return answers.parse_v2_grpc(response, self.output_name)


USER_CLASSES = {
    "rest": RestUser, "v2": V2User, "image": ImageUser, "grpc": GrpcUser, "v2-grpc": V2GrpcUser,
}  # fmt: skip
