#!/usr/bin/env python3
"""Prepare a benchmark's test data, then become Locust with ``$BENCH_CONFIG`` pointing at it.

The locustfile reads its images, labels and offline predictions from files the parent process of
``python -m benchmarks run`` writes. A long-running Locust master or worker (compose, Kubernetes)
has no such parent, so each container prepares the same files itself: the selection is seeded,
so the master and every worker hold identical data. Then ``exec locust <arguments>``.

Environment: MODEL_NAME (lenet), MODEL_REPOSITORY (/models), BENCH_DIR (/tmp/bench),
BENCH_DATASET (mnist), BENCH_NUM_IMAGES (1024), BENCH_PROTOCOL (rest),
BENCH_IMAGES_PER_REQUEST (1), LOCUST_HOST (the target, for gRPC users).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def prepare(environ: dict[str, str]) -> Path:
    """Write test_data.npz and bench_config.json into BENCH_DIR; return the config's path."""
    from benchmarks.prepare import find_model, prepare_test_data

    out = Path(environ.get("BENCH_DIR", "/tmp/bench"))
    samples = out / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    model = environ.get("MODEL_NAME", "lenet")
    model_files = find_model(environ.get("MODEL_REPOSITORY", "/models"), model)
    data_path = out / "test_data.npz"
    prepare_test_data(
        data_path,
        environ.get("BENCH_DATASET", "mnist"),
        model_files,
        int(environ.get("BENCH_NUM_IMAGES", "1024")),
    )
    config = {
        "target": environ.get("LOCUST_HOST", ""),
        "model": model,
        "version": None,
        "label": None,
        "protocol": environ.get("BENCH_PROTOCOL", "rest"),
        "images_per_request": int(environ.get("BENCH_IMAGES_PER_REQUEST", "1")),
        "warmup_s": 0,
        "data_path": str(data_path.resolve()),
        "samples_dir": str(samples.resolve()),
    }
    config_path = out / "bench_config.json"
    config_path.write_text(json.dumps(config, indent=2))
    return config_path


def main(argv: list[str]) -> None:
    """Prepare, then replace this process with Locust (signals reach Locust directly)."""
    os.environ["BENCH_CONFIG"] = str(prepare(dict(os.environ)))
    os.execvp("locust", ["locust", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
