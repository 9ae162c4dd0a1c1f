"""Lifecycles and the event loop: a failed load closes the runtime it made, and neither a
repository scan nor a multiprocess ``/metrics`` scrape blocks the loop while the disk is slow.

Slow disks are real here: a FIFO in place of a file blocks its reader until someone writes, as a
stalled network volume would, and a repository subclass sleeps inside its folder walk.
"""

from __future__ import annotations

import asyncio
import json
import os
import struct
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from serving.batching import BatchingConfig
from serving.lifecycle import VersionState
from serving.repository import ModelRepository, ModelsConfig, ScanResult, read_metadata
from serving.runtimes.onnx import OnnxOptions, OnnxRuntime
from tests.metrics_text import metric_value
from tests.serving.serving_harness import GatewayProcess, RunningGateway
from tests.tiny_models import (
    linear_classifier,
    metadata_for,
    reference_predict,
    sample_images,
    write_models_config,
    write_version,
)

MODEL = "tiny"


class RecordingRuntime(OnnxRuntime):
    """The real ONNX Runtime model on the CPU, counting ``close()`` calls and watching whether
    its session object is still alive anywhere."""

    def __init__(self, version_dir: Path) -> None:
        super().__init__(version_dir, OnnxOptions(device="cpu"))
        self.version = int(Path(version_dir).name)
        self.closed = 0
        self._session_ref = weakref.ref(self.session)

    def close(self) -> None:
        self.closed += 1
        super().close()

    @property
    def released(self) -> bool:
        """The ONNX Runtime session has been freed."""
        return self._session_ref() is None


class Runtimes:
    """A runtime factory that keeps every runtime it made."""

    def __init__(self) -> None:
        self.made: list[RecordingRuntime] = []

    def __call__(self, path: Path) -> RecordingRuntime:
        runtime = RecordingRuntime(path)
        self.made.append(runtime)
        return runtime


def statuses(gateway: RunningGateway) -> dict[str, tuple[str, str]]:
    reply = httpx.get(f"{gateway.http_url}/v1/models/{MODEL}", timeout=10).json()
    return {
        s["version"]: (s["state"], s["status"]["error_message"])
        for s in reply["model_version_status"]
    }


def served_version(http_url: str, images: np.ndarray) -> tuple[str, np.ndarray]:
    reply = httpx.post(
        f"{http_url}/v1/models/{MODEL}:predict", json={"instances": images.tolist()}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    version = httpx.get(f"{http_url}/v2/models/{MODEL}", timeout=10).json()["versions"][0]
    return version, np.asarray(reply.json()["predictions"], dtype=np.float32)


# --- a failed load closes what it opened ------------------------------------------------------


def test_failed_loads_close_their_runtime_and_the_serving_version_keeps_serving(
    tmp_path: Path, start_gateway: Callable[..., RunningGateway]
) -> None:
    write_version(tmp_path, MODEL, 1, linear_classifier(seed=1))
    gateway: RunningGateway = start_gateway(tmp_path)
    assert gateway.gateway is not None
    repository = gateway.gateway.repository
    runtimes = Runtimes()
    repository.runtime_factory = runtimes

    # Version 3: metadata.json labels 3 classes of a 10-class output (found after the session is
    # made). Version 2: metadata.json is not JSON (found before any session is made).
    write_version(tmp_path, MODEL, 3, linear_classifier(seed=3), metadata=metadata_for(MODEL, 3, 3))
    broken = write_version(tmp_path, MODEL, 2, linear_classifier(seed=2)) / "metadata.json"
    broken.write_text('{"class_names": ["zero", ')
    gateway.run(repository.sync())

    status = statuses(gateway)
    assert status["1"] == ("AVAILABLE", "")
    assert status["2"][0] == "END" and "metadata.json is not valid JSON" in status["2"][1]
    assert status["3"][0] == "END" and "names 3 classes" in status["3"][1]
    assert [r.version for r in runtimes.made] == [3]  # version 2 never got a session
    assert runtimes.made[0].closed == 1 and runtimes.made[0].released
    assert 'serving_model_state{model="tiny",version="3"} 0.0' in gateway.metrics_text()

    images = sample_images(3, seed=5)
    version, scores = served_version(gateway.http_url, images)
    assert version == "1"
    expected = reference_predict(tmp_path / MODEL / "1" / "model.onnx", images)
    np.testing.assert_allclose(scores, expected, rtol=1e-6)

    # Mending metadata.json is a change of the version's files: it is retried, and it wins.
    broken.write_text(json.dumps(metadata_for(MODEL, 2, 10)))
    gateway.run(repository.sync())
    status = statuses(gateway)
    assert status["2"] == ("AVAILABLE", "") and "1" not in status
    assert status["3"][0] == "END"  # unchanged, so not retried
    assert [r.version for r in runtimes.made] == [3, 2]
    assert runtimes.made[1].closed == 0 and not runtimes.made[1].released
    assert served_version(gateway.http_url, images)[0] == "2"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\xff\xfe not text", "is not valid JSON"),
        (b"[1, 2]", "holds list, not an object"),
        (b'{"class_names": "abc"}', "class_names is not a list"),
        (b'{"preprocessing": [28, 28]}', "preprocessing is not an object"),
    ],
)
def test_metadata_is_checked_before_a_session_is_made(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    (tmp_path / "metadata.json").write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        read_metadata(tmp_path)
    assert read_metadata(tmp_path / "absent") == {}


def test_close_releases_the_session_also_after_cuda_graph_binding(tmp_path: Path) -> None:
    """The CUDA graph path keeps an IO binding, which holds the native session: close drops it.
    (That path runs on the CPU device here, as in test_serving_config.)"""
    version_dir = write_version(tmp_path, MODEL, 1, linear_classifier())
    runtime = OnnxRuntime(version_dir, OnnxOptions(device="cpu"))
    runtime.io_device = "cpu"
    runtime._predict_cuda_graph({"image": sample_images(2)})
    native = weakref.ref(runtime.session._sess)
    runtime.close()
    assert native() is None
    runtime.close()  # idempotent


# --- nothing blocking on the event loop -------------------------------------------------------


class SlowScanRepository(ModelRepository):
    """A repository on a slow volume: every folder walk takes ``delay_s``."""

    delay_s = 0.5

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.scans: list[tuple[threading.Thread, float, float]] = []

    def _scan(self, config: ModelsConfig, *settling: Any) -> ScanResult:
        start = time.monotonic()
        time.sleep(self.delay_s)
        found = super()._scan(config, *settling)
        self.scans.append((threading.current_thread(), start, time.monotonic()))
        return found


def test_a_slow_folder_walk_leaves_the_loop_free(tmp_path: Path) -> None:
    write_version(tmp_path, MODEL, 1, linear_classifier())

    async def scenario() -> tuple[SlowScanRepository, list[float], threading.Thread]:
        repository = SlowScanRepository(tmp_path, Runtimes(), BatchingConfig())
        syncing = asyncio.create_task(repository.sync())
        ticks: list[float] = []
        while not syncing.done():
            await asyncio.sleep(0.01)
            ticks.append(time.monotonic())
        await syncing
        assert repository.resolve(MODEL).version == 1
        await repository.close()
        return repository, ticks, threading.current_thread()

    repository, ticks, loop_thread = asyncio.run(scenario())
    ((thread, start, end),) = repository.scans
    assert thread is not loop_thread
    assert sum(start <= tick <= end for tick in ticks) >= 5  # the loop turned during the walk


def _feed(fifo: Path, text: str) -> None:
    with fifo.open("w") as writer:  # blocks until the reader opens its end
        writer.write(text)


@contextmanager
def rescued(*fed: tuple[Path, str], after_s: float = 20) -> Iterator[None]:
    """If the test has not finished after ``after_s``, feed any FIFO someone is reading from a
    daemon thread, so a reader blocked on one (on the loop, if the code is wrong) ends and the
    test fails instead of hanging."""
    done = threading.Event()

    def rescue() -> None:
        if done.wait(after_s):
            return
        while not done.is_set():
            for fifo, text in fed:
                try:  # without blocking: this fails unless a reader has the FIFO open
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    continue
                with os.fdopen(fd, "w") as writer:
                    writer.write(text)
            time.sleep(0.1)

    threading.Thread(target=rescue, daemon=True).start()
    try:
        yield
    finally:
        done.set()


def test_config_and_metadata_reads_wait_off_the_loop(tmp_path: Path) -> None:
    """models.config and metadata.json on a stalled volume: the scan waits in a worker thread
    while the loop runs on; the version stays LOADING, without a session, until metadata.json
    arrives, then becomes AVAILABLE."""
    version_dir = write_version(tmp_path, MODEL, 1, linear_classifier())
    config_text = write_models_config(tmp_path, [MODEL], labels={MODEL: {"stable": 1}}).read_text()
    metadata_text = (version_dir / "metadata.json").read_text()
    config, metadata = tmp_path / "models.config", version_dir / "metadata.json"
    for fifo in (config, metadata):
        fifo.unlink()
        os.mkfifo(fifo)

    async def turns(count: int) -> float:
        start = time.monotonic()
        for _ in range(count):
            await asyncio.sleep(0.01)
        return time.monotonic() - start

    async def scenario() -> None:
        runtimes = Runtimes()
        repository = ModelRepository(tmp_path, runtimes, BatchingConfig())
        syncing = asyncio.create_task(repository.sync())
        assert await turns(20) < 5
        assert not syncing.done() and repository.models == {}  # waiting for models.config

        await asyncio.to_thread(_feed, config, config_text)
        while MODEL not in repository.models or not repository.models[MODEL].versions:
            assert await turns(1) < 5 and not syncing.done()
        assert await turns(20) < 5
        mv = repository.models[MODEL].versions[1]
        assert mv.state is VersionState.LOADING and runtimes.made == []  # waiting for metadata.json
        assert not syncing.done()

        await asyncio.to_thread(_feed, metadata, metadata_text)
        await asyncio.wait_for(syncing, 60)
        assert repository.resolve(MODEL, label="stable") is mv
        assert mv.state is VersionState.AVAILABLE and mv.class_names[:2] == ["class_0", "class_1"]
        await repository.close()
        assert runtimes.made[0].closed == 1

    with rescued((config, config_text), (metadata, metadata_text)):
        asyncio.run(scenario())


def test_multiprocess_metrics_scrape_leaves_the_loop_free(
    tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In multiprocess mode ``/metrics`` reads every worker's files; one that stalls (a FIFO that
    blocks its reader) holds up that scrape only, while the gateway keeps answering."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    gateway = GatewayProcess(tiny_repo)
    stalled = tmp_path / "counter_stalled.db"
    writer = None
    try:
        images = sample_images(2, seed=3)
        served_version(gateway.http_url, images)
        os.mkfifo(stalled)
        scrape: list[httpx.Response] = []
        scraping = threading.Thread(
            target=lambda: scrape.append(httpx.get(f"{gateway.http_url}/metrics", timeout=60))
        )
        scraping.start()
        deadline = time.monotonic() + 30
        while writer is None:  # opening the write end without blocking works once it is read
            try:
                writer = os.open(stalled, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                assert time.monotonic() < deadline, "the scrape never read the metrics files"
                time.sleep(0.01)

        # The scrape is stuck reading; everything else is served meanwhile.
        live = httpx.get(f"{gateway.http_url}/v2/health/live", timeout=5)
        assert live.json() == {"live": True}
        version, scores = served_version(gateway.http_url, images)
        np.testing.assert_allclose(
            scores, reference_predict(tiny_repo / MODEL / version / "model.onnx", images), rtol=1e-6
        )
        assert scraping.is_alive() and not scrape

        os.write(writer, struct.pack("<ii", 8, 0))  # an empty metrics file: 8 bytes used
        os.close(writer)
        writer = None
        scraping.join(30)
        (reply,) = scrape
        assert reply.status_code == 200
        assert metric_value(reply.text, "serving_requests_total", model="tiny") >= 1
    finally:
        if writer is not None:
            os.close(writer)
        gateway.stop()
