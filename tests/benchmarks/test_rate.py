"""Open-loop load (``python -m benchmarks rate``) against real servers on loopback.

Bounded: a few seconds of load at tens of requests per second. The only time-based assertions
are lower bounds a deliberately slow server makes certain (it cannot answer sooner), never how
fast something is.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest

from benchmarks import openloop
from benchmarks.prepare import find_model, prepare_test_data
from benchmarks.rate import RateConfig, run_rate, summarise_point
from benchmarks.run import SCHEMA_PATH, RunConfig, run_benchmark
from benchmarks.servers import Server, gateway
from tests.benchmarks.conftest import permute_outputs, validate_report

MODEL = "lenet"
SERVICE_S = 0.05  # the slow server answers one request at a time, each after this long

pytestmark = pytest.mark.slow


class SlowServer:
    """TF Serving REST ``:predict`` that answers one request at a time, ``SERVICE_S`` each."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        lock = asyncio.Lock()
        answer = json.dumps({"predictions": [[0.1] * 10]}).encode()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                    await reader.readexactly(length)
                    async with lock:  # one at a time: arrivals queue up here
                        await asyncio.sleep(SERVICE_S)
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(answer)}\r\n\r\n".encode()
                        + answer
                    )
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        async def cancel_handlers() -> None:
            current = asyncio.current_task()
            handlers = [task for task in asyncio.all_tasks() if task is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_handlers(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def slow_server() -> Iterator[SlowServer]:
    server = SlowServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def test_data(trained_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rate-data") / "test_data.npz"
    prepare_test_data(path, "mnist", find_model(trained_repository, MODEL), 64)
    return path


def spec_for(
    port: int, data: Path, rate: float, seconds: float, **extra: object
) -> openloop.WorkerSpec:
    schedule = openloop.make_schedule(rate, seconds, "constant")
    options: dict[str, object] = {"timeout_s": 10.0, "max_connections": 256, "nice": 0} | extra
    return openloop.WorkerSpec(
        protocol="rest", target=f"http://127.0.0.1:{port}", model=MODEL, version=None,
        label=None, data_path=str(data), images_per_request=1,
        request_ids=np.arange(len(schedule)), offsets=schedule,
        start_at=time.monotonic() + 0.2, **options,  # type: ignore[arg-type]
    )  # fmt: skip


def test_a_slow_server_does_not_slow_the_schedule_and_its_queue_is_in_the_latency(
    slow_server: SlowServer, test_data: Path
) -> None:
    # 40 requests/s against a server that manages 20/s: a closed loop would slow to 20/s and
    # see 50 ms; open loop keeps sending, and request k waits for the k before it.
    rate, seconds = 40.0, 1.0
    result = openloop.run_worker(spec_for(slow_server.port, test_data, rate, seconds))
    count = len(result["scheduled"])
    assert count == 40
    assert np.all(result["outcome"] == 200)
    # The lag bound tells an open loop from a closed one, not how quiet the machine is: a closed
    # loop behind this server would fall 25 ms further behind per request (about 1 s by the
    # last), while a busy CI host may add some 10 ms of lag to an open one.
    lag_bound_ms = 250.0
    point = summarise_point(
        RateConfig(
            targets=["x=http://127.0.0.1:1"], model=MODEL, rates=[rate], max_lag_ms=lag_bound_ms
        ),
        rate,
        {**result, "cpu_percent": [0.0], "nice": [0]},
        (0.0, seconds),
    )
    assert point["send_ratio"] >= 0.99 and point["valid"], point["invalid_reasons"]
    # Sent on schedule, long before earlier requests were answered ...
    assert result["sent"][-1] < result["done"][-2]
    assert result["peak_outstanding"] >= 10
    # ... and each latency counts from the scheduled time: the last request waited behind 39
    # others, SERVICE_S each, so at least 40 * 50 ms - 39 * 25 ms after it was scheduled.
    latency = result["done"] - result["scheduled"]
    assert latency[-1] >= count * SERVICE_S - (count - 1) / rate - 0.001
    assert point["latency_ms"]["max"] >= 1000 * (count * SERVICE_S - (count - 1) / rate) - 1


def test_a_generator_that_cannot_keep_up_marks_the_point_invalid(
    slow_server: SlowServer, test_data: Path
) -> None:
    # 2,000,000 arrivals in 0.04 s: no Python process dispatches 50 million requests a second.
    rate, seconds = 50_000_000.0, 0.04
    result = openloop.run_worker(
        spec_for(slow_server.port, test_data, rate, seconds, timeout_s=0.5, max_connections=4)
    )
    point = summarise_point(
        RateConfig(targets=["x=http://127.0.0.1:1"], model=MODEL, rates=[rate]),
        rate,
        {**result, "cpu_percent": [0.0], "nice": [0]},
        (0.0, seconds),
    )
    assert point["valid"] is False
    assert any("could not keep up" in reason for reason in point["invalid_reasons"])
    assert point["latency_ms"] == {"count": point["latency_ms"]["count"]}  # no numbers reported
    assert point["meets_bound"] is None


def validate(out: Path) -> dict[str, Any]:
    return validate_report(out, heading="Open-loop rate benchmark")


def short_rate(server: Server, repository: Path, out: Path, **extra: object) -> RateConfig:
    options: dict[str, object] = {
        "rates": [20.0, 40.0], "protocols": ["v2", "grpc"], "duration_s": 1.0, "warmup_s": 0.5,
        "num_images": 128, "cooldown_s": 0.1, "p99_bound_ms": 2000.0, "search_steps": 1,
        "generator_nice": 0,
    } | extra  # fmt: skip
    return RateConfig(
        targets=[f"gateway={server.http},{server.grpc}"], model=MODEL, out=str(out),
        repository=str(repository), **options,  # type: ignore[arg-type]
    )  # fmt: skip


def test_rate_against_the_gateway_checks_every_answer_and_writes_the_report(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    results = run_rate(short_rate(served_gateway, trained_repository, tmp_path, processes=2))
    assert results["failure"] is False, results["failure_reasons"]
    assert [(s["protocol"], len(s["points"])) for s in results["series"]] == [
        ("v2", 2), ("grpc", 2),
    ]  # fmt: skip
    for series in results["series"]:
        assert series["reference"]["matches"] is True
        assert series["accuracy"]["agreement"] == 1.0
        assert series["accuracy"]["count"] >= 60
        for point in series["points"]:
            assert point["requests"] == round(point["offered_rate"] * 1.0)
            assert len(point["generator_cpu_percent"]) == 2
    on_disk = validate(tmp_path)
    assert on_disk["comparison"] and on_disk["invalid_points"] == results["invalid_points"]


def test_rate_speaks_kserve_v2_grpc(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    config = short_rate(served_gateway, trained_repository, tmp_path, protocols=["v2-grpc"])
    results = run_rate(config)
    assert results["failure"] is False, results["failure_reasons"]
    (series,) = results["series"]
    assert series["protocol"] == "v2-grpc" and len(series["points"]) == 2
    assert series["accuracy"]["agreement"] == 1.0 and series["accuracy"]["count"] >= 40
    validate(tmp_path)


def test_a_model_whose_answers_are_wrong_fails_the_rate_run(
    permuted_repository: Path, trained_repository: Path, tmp_path: Path
) -> None:
    # The server serves a broken copy (same version, same class names, outputs rolled by one);
    # the reference is the good model, so every answer disagrees with it.
    with gateway(permuted_repository, model=MODEL, log_path=tmp_path / "gateway.log") as server:
        results = run_rate(
            short_rate(
                server,
                trained_repository,
                tmp_path / "out",
                rates=[20.0],
                protocols=["rest"],
                p99_bound_ms=None,
            )
        )
    assert results["failure"] is True
    (series,) = results["series"]
    assert series["accuracy"]["agreement"] < 0.5
    assert any("agreement with offline predictions" in r for r in results["failure_reasons"])
    validate(tmp_path / "out")


def test_the_reference_follows_the_version_the_server_serves(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    # Locally versions 1 and 2 (the newest, a broken copy); the server serves version 1 only.
    local = tmp_path / "local"
    shutil.copytree(trained_repository, local)
    shutil.copytree(local / MODEL / "1", local / MODEL / "2")
    permute_outputs(local / MODEL / "2" / "model.onnx", np.roll(np.arange(10), 1))
    results = run_rate(
        short_rate(served_gateway, local, tmp_path / "out", rates=[20.0], protocols=["rest"])
    )
    (series,) = results["series"]
    assert series["reference"]["local"]["directory"].endswith(f"{MODEL}/1")
    assert "not the newest local version" in series["reference"]["notes"][0]
    assert results["failure"] is False, results["failure_reasons"]


def test_run_says_plainly_when_the_reference_is_not_the_served_model(
    served_gateway: Server, trained_repository: Path, tmp_path: Path
) -> None:
    # Locally only version 2; the server answers with version 1.
    local = tmp_path / "local"
    shutil.copytree(trained_repository / MODEL / "1", local / MODEL / "2")
    metadata = json.loads((local / MODEL / "2" / "metadata.json").read_text())
    (local / MODEL / "2" / "metadata.json").write_text(json.dumps(metadata | {"version": 2}))
    results = run_benchmark(
        RunConfig(
            target=served_gateway.http or "", model=MODEL, protocol="rest", out=str(tmp_path / "out"),
            users=1, spawn_rate=1.0, duration_s=1.0, warmup_s=0.5, num_images=64,
            ceiling_seconds=0.0, repository=str(local),
        )
    )  # fmt: skip
    assert results["reference"]["matches"] is False
    assert results["failure"] is True
    (reason,) = [r for r in results["failure_reasons"] if "reference" in r]
    assert "the offline reference is not the served model" in reason
    assert "the server answers with version 1" in reason
    jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text())).validate(
        json.loads((tmp_path / "out" / "results.json").read_text())
    )


def test_the_search_bisects_between_passing_and_failing_rates_and_skips_invalid_points() -> None:
    from benchmarks.rate import Series, bracket_bound, search_step

    def point(rate: float, meets: bool | None, valid: bool = True) -> dict[str, object]:
        return {"offered_rate": rate, "meets_bound": meets, "valid": valid}

    config = RateConfig(targets=["x=http://127.0.0.1:1"], model=MODEL, rates=[1.0])
    series = Series(Server("x", None, None), "rest", "", None, Path(), {})  # type: ignore[arg-type]
    series.points = [
        point(500, True),
        point(1000, True),
        point(1500, None, False),
        point(2000, False),
    ]
    assert bracket_bound(series.points)["invalid_rates"] == [1500]
    assert search_step(series, config) is None  # 1500 is the middle: tried, and invalid
    series.points[2] = point(1750, None, False)
    assert search_step(series, config) == 1500  # invalid points neither pass nor fail
    series.points = [point(250, False), point(500, False)]
    assert bracket_bound(series.points)["verdict"] == "no valid rate tried stays under the bound"
    assert search_step(series, config) == 125  # below everything tried: halve
    series.points = [point(250, True), point(500, True)]
    assert search_step(series, config) is None
    assert bracket_bound(series.points)["verdict"].startswith("at least")
