"""In-process ONNX Runtime throughput: the ceiling that no server around the same model can beat.

Every served result is reported as a ratio to this number (the server's efficiency), so a reader
can tell how much of the model's speed the transport, batching and the load generator leave.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

ORT_TYPE_TO_NUMPY = {
    "tensor(uint8)": np.uint8,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
}


def create_session(
    model_path: str | Path, providers: str = "auto", intra_op_threads: int = 0
) -> Any:
    """An ONNX Runtime session; 'auto' tries CUDA and keeps whatever actually loaded.

    onnxruntime-gpu lists CUDA even where it cannot load, so the real choice is read back from
    ``session.get_providers()`` after creation (see docs/ARCHITECTURE.md, known traps).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # the CUDA fallback error log is expected on CPU machines
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    if providers == "auto":
        wanted = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        wanted.append("CPUExecutionProvider")
    else:
        wanted = [p.strip() for p in providers.split(",") if p.strip()]
    # A CUDA provider that cannot load is logged as an error before the CPU fallback; that is
    # expected here, so only fatal messages pass while the session is made.
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=wanted)
    finally:
        ort.set_default_logger_severity(2)


def synthetic_inputs(session: Any, batch_size: int, seed: int = 0) -> tuple[str, np.ndarray]:
    """A batch shaped like the model's input; the contract's models take raw uint8 pixels."""
    model_input = session.get_inputs()[0]
    dtype = ORT_TYPE_TO_NUMPY.get(model_input.type, np.float32)
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in model_input.shape[1:]]
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 256, size=[batch_size, *dims]).astype(dtype)
    return model_input.name, batch


def measure_ceiling(
    model_path: str | Path,
    batch_sizes: list[int],
    seconds_per_batch: float = 2.0,
    providers: str = "auto",
    intra_op_threads: int = 0,
    images: np.ndarray | None = None,
) -> dict[str, Any]:
    """Images/s of ``session.run`` for each batch size, measured for about ``seconds_per_batch``.

    ``images_per_s`` is batch size over the median run time (robust on a shared machine);
    ``images_per_s_sustained`` is what the whole measurement window delivered.

    ``images`` (real test images) are used when given, tiled to the batch size, so the ceiling runs
    on the same data as the served benchmark; otherwise random pixels of the input's shape.
    """
    session = create_session(model_path, providers, intra_op_threads)
    input_name = session.get_inputs()[0].name
    rows = []
    for batch_size in batch_sizes:
        if images is not None and len(images):
            reps = -(-batch_size // len(images))
            batch = np.concatenate([images] * reps)[:batch_size]
        else:
            _, batch = synthetic_inputs(session, batch_size)
        feeds = {input_name: batch}
        for _ in range(3):  # first runs allocate and pick kernels
            session.run(None, feeds)
        latencies = []
        started = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            session.run(None, feeds)
            latencies.append(time.perf_counter() - t0)
            if time.perf_counter() - started >= seconds_per_batch and len(latencies) >= 5:
                break
        elapsed = time.perf_counter() - started
        lat_ms = np.asarray(latencies) * 1000.0
        median_s = float(np.median(latencies))
        rows.append(
            {
                "batch_size": batch_size,
                "runs": len(latencies),
                # From the median run: the ceiling is what the model does when it has the CPU, and
                # the median ignores the stalls other processes on a shared machine cause.
                "images_per_s": batch_size / median_s,
                "images_per_s_sustained": batch_size * len(latencies) / elapsed,
                "batches_per_s": len(latencies) / elapsed,
                "latency_ms_p50": float(np.percentile(lat_ms, 50)),
                "latency_ms_p99": float(np.percentile(lat_ms, 99)),
            }
        )
    return {
        "model_path": str(model_path),
        "providers": list(session.get_providers()),
        "intra_op_threads": intra_op_threads,
        "seconds_per_batch": seconds_per_batch,
        "results": rows,
    }


def ceiling_for(ceiling: dict[str, Any] | None, batch_size: int) -> float | None:
    """The ceiling's images/s at the batch size nearest to (not above, when possible) ``batch_size``."""
    if not ceiling or not ceiling.get("results"):
        return None
    rows = sorted(ceiling["results"], key=lambda r: r["batch_size"])
    candidates = [r for r in rows if r["batch_size"] <= batch_size] or rows[:1]
    return float(candidates[-1]["images_per_s"])


def format_ceiling(ceiling: dict[str, Any]) -> str:
    """A small text table for the terminal."""
    lines = [
        f"ONNX Runtime in-process ceiling: {ceiling['model_path']} on {ceiling['providers'][0]}",
        f"{'batch':>6} {'images/s':>12} {'sustained':>10} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for row in ceiling["results"]:
        lines.append(
            f"{row['batch_size']:>6} {row['images_per_s']:>12.1f}"
            f" {row['images_per_s_sustained']:>10.1f}"
            f" {row['latency_ms_p50']:>8.3f} {row['latency_ms_p99']:>8.3f}"
        )
    return "\n".join(lines)
