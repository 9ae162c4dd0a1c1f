"""Hot reload while requests flow: new versions switch in with zero failed requests, a corrupt
version is reported and never replaces the serving one, a removed version is drained."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.serving.serving_harness import RunningGateway, wait_until
from tests.tiny_models import linear_classifier, sample_images, write_version

MODEL = "tiny"


class Traffic:
    """Keeps V2 infer requests flowing from a background thread; records versions and failures."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        images = sample_images(2)
        self.body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [2, 28, 28, 1],
                    "datatype": "UINT8",
                    "data": images.ravel().tolist(),
                }
            ]
        }

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self._stop.is_set():
                try:
                    reply = http.post(f"/v2/models/{MODEL}/infer", json=self.body)
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                    continue
                if reply.status_code == 200:
                    self.versions[reply.json()["model_version"]] += 1
                else:
                    self.failures.append(f"{reply.status_code} {reply.text}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_for_version(self, version: str, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        before = self.versions[version]
        while self.versions[version] <= before + 3:
            if time.monotonic() > end:
                pytest.fail(
                    f"version {version} never served; seen {dict(self.versions)}, failures {self.failures[:3]}"
                )
            time.sleep(0.02)


def statuses(gateway: RunningGateway) -> dict[str, tuple[str, str]]:
    reply = httpx.get(f"{gateway.http_url}/v1/models/{MODEL}", timeout=10).json()
    return {
        s["version"]: (s["state"], s["status"]["error_message"])
        for s in reply["model_version_status"]
    }


def test_hot_reload_under_traffic(tmp_path: Path, start_gateway) -> None:  # type: ignore[no-untyped-def]
    write_version(tmp_path, MODEL, 1, linear_classifier(seed=1))
    gateway: RunningGateway = start_gateway(tmp_path, poll_interval_s=0.05)
    with Traffic(gateway.http_url) as traffic:
        traffic.wait_for_version("1")

        # A new version is loaded, warmed, switched in; the old one is drained and unloaded.
        write_version(tmp_path, MODEL, 2, linear_classifier(seed=2))
        traffic.wait_for_version("2")
        wait_until(
            lambda: set(statuses(gateway)) == {"2"}, timeout_s=60, what="version 1 to be unloaded"
        )

        # A corrupt version is reported and never displaces version 2.
        write_version(tmp_path, MODEL, 3, b"this is not an onnx model")
        wait_until(lambda: "3" in statuses(gateway), timeout_s=60, what="version 3 to be reported")
        state, error = statuses(gateway)["3"]
        assert state == "END" and "failed to load" in error
        served_before = traffic.versions["2"]
        traffic.wait_for_version("2")
        assert traffic.versions["2"] > served_before
        assert statuses(gateway)["2"] == ("AVAILABLE", "")

        # Removing the serving version falls back to the newest loadable one (1), draining 2.
        shutil.rmtree(tmp_path / MODEL / "2")
        traffic.wait_for_version("1")
        wait_until(
            lambda: "2" not in statuses(gateway), timeout_s=60, what="version 2 to be unloaded"
        )

    assert traffic.failures == []
    assert traffic.versions["1"] > 0 and traffic.versions["2"] > 0
    assert "3" not in traffic.versions
