"""A writer racing the poller: versions published while requests flow never fail a request and
are never served half-written, whether written beside and renamed (the safe way, by hand or by
`python -m training export --from`) or, as users do, written in place."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from clients import Client
from serving.repository import SETTLE_S
from tests.serving.serving_harness import RunningGateway, gateway_settings, wait_until
from tests.tiny_models import linear_classifier, metadata_for, sample_images, write_version

MODEL = "raced"
IMAGES = sample_images(2, seed=9)
POLL_S = 0.02


def reference(model: onnx.ModelProto) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["probabilities"], {"image": IMAGES})[0])


class Traffic:
    """Threads sending V2 JSON requests until stopped: every answer's version and whether its
    probabilities are that version's, every failure."""

    def __init__(self, url: str, expected: dict[int, np.ndarray], threads: int = 2) -> None:
        self.url, self.expected = url, expected
        self.served: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        body = {
            "inputs": [
                {"name": "image", "datatype": "UINT8", "shape": list(IMAGES.shape),
                 "data": IMAGES.ravel().tolist()}
            ]
        }  # fmt: skip
        with httpx.Client(timeout=30) as http:
            while not self._stop.is_set():
                reply = http.post(f"{self.url}/v2/models/{MODEL}/infer", json=body)
                if reply.status_code != 200:
                    self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                    continue
                answer = reply.json()
                version = int(answer["model_version"])
                data = np.asarray(answer["outputs"][0]["data"]).reshape(IMAGES.shape[0], -1)
                wanted = self.expected.get(version)
                if wanted is None or np.abs(data - wanted).max() > 1e-5:
                    self.failures.append(f"version {version} answered what it does not compute")
                self.served[version] += 1

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def wait_for(self, version: int) -> None:
        before = self.served[version]
        wait_until(
            lambda: self.served[version] > before + 3 or bool(self.failures),
            timeout_s=60,
            what=f"version {version} to be served (served: {dict(self.served)})",
        )
        assert not self.failures, self.failures[:3]


def write_slowly(path: Path, data: bytes, pieces: int = 6, pause_s: float = 0.05) -> None:
    """Write ``data`` in ``pieces`` with pauses, as a copy over a slow link would."""
    step = -(-len(data) // pieces)
    with open(path, "wb") as out:
        for start in range(0, len(data), step):
            out.write(data[start : start + step])
            out.flush()
            os.fsync(out.fileno())
            time.sleep(pause_s)


def publish_beside(model_dir: Path, version: int, model: onnx.ModelProto) -> None:
    """The documented way by hand: write into a hidden folder beside the versions, rename."""
    partial = model_dir / f".partial-{version}"
    partial.mkdir()
    write_slowly(partial / "model.onnx", model.SerializeToString())
    (partial / "metadata.json").write_text(json.dumps(metadata_for(MODEL, version, 10)))
    os.rename(partial, model_dir / str(version))


def version_states(url: str) -> dict[int, str]:
    reply = httpx.get(f"{url}/v1/models/{MODEL}", timeout=10).json()
    return {int(s["version"]): s["state"] for s in reply["model_version_status"]}


@pytest.fixture
def gateway(tmp_path: Path) -> Any:
    write_version(tmp_path, MODEL, 1, linear_classifier(seed=1))
    running = RunningGateway(gateway_settings(tmp_path, poll_interval_s=POLL_S)).start()
    yield running
    running.stop()


def test_versions_published_under_traffic_are_never_half_served(tmp_path: Path, gateway) -> None:
    from training.own_model import OwnModelOptions, export_own_model

    models = {v: linear_classifier(seed=v) for v in range(1, 6)}
    expected = {v: reference(m) for v, m in models.items()}
    model_dir = tmp_path / MODEL
    with Traffic(gateway.http_url, expected) as traffic:
        traffic.wait_for(1)

        # Written beside and renamed into place, by hand: each appears whole, and replaces the
        # one before without a failed request.
        for version in (2, 3):
            publish_beside(model_dir, version, models[version])
            traffic.wait_for(version)

        # Written in place, the way that used to go wrong: model.onnx a piece at a time, then
        # metadata.json. The poller leaves the folder alone until nothing in it has changed for
        # SETTLE_S, so version 4 is never loaded from a truncated file or without its metadata.
        partial = model_dir / "4"
        partial.mkdir()
        seen_while_writing: list[dict[int, str]] = []
        write_slowly(partial / "model.onnx", models[4].SerializeToString(), pause_s=0.1)
        seen_while_writing.append(version_states(gateway.http_url))
        time.sleep(SETTLE_S / 3)
        seen_while_writing.append(version_states(gateway.http_url))
        metadata = {**metadata_for(MODEL, 4, 10), "class_names": [f"digit {i}" for i in range(10)]}
        (partial / "metadata.json").write_text(json.dumps(metadata))
        seen_while_writing.append(version_states(gateway.http_url))
        assert all(4 not in states for states in seen_while_writing), seen_while_writing
        traffic.wait_for(4)
        with Client(gateway.http_url) as client:
            assert client.metadata(MODEL).class_names == metadata["class_names"]

        # The training command publishes through a staging folder and a rename as well.
        onnx.save(models[5], str(tmp_path / "brought.onnx"))
        export_own_model(
            OwnModelOptions(
                source=tmp_path / "brought.onnx", name=MODEL, class_names=",".join("abcdefghij"),
                repository=tmp_path, fp16=False,
            )
        )  # fmt: skip
        traffic.wait_for(5)

    assert traffic.failures == []
    assert all(traffic.served[v] > 0 for v in (1, 2, 3, 4, 5)), dict(traffic.served)
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "2", "3", "4", "5"]
