"""The runtime interface: load a model, describe its tensors, predict on numpy dicts.

A runtime is synchronous and blocking; the batcher calls ``predict`` from a worker thread, or on the
event loop for a batch of a few rows that measured lighter than the hand-off (serving.batching).
"""

from __future__ import annotations

import abc

import numpy as np

# Re-exported: the one TensorSpec, shared with the client's metadata.
from clients.codec import TensorSpec as TensorSpec


class ModelRuntime(abc.ABC):
    """One loaded model version."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    #: where compute runs, e.g. "CUDAExecutionProvider"; reported in logs, status and metrics.
    provider: str = "unknown"
    #: True where a call whose batch size differs from the previous call's is slow (a GPU's
    #: kernel plans): the batcher then pads every batch to one size, warmed at load.
    new_shapes_are_costly: bool = False

    @abc.abstractmethod
    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on a batch; inputs are already validated against ``self.inputs``."""

    def zero_feeds(self, batch: int) -> dict[str, np.ndarray]:
        """Zero-filled inputs of ``batch`` rows (dynamic dimensions taken as 1)."""
        return {
            spec.name: np.zeros(
                (batch, *[dim if dim > 0 else 1 for dim in spec.shape[1:]]), dtype=spec.dtype
            )
            for spec in self.inputs
        }

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run zero-filled batches once so the first real request does not pay for setup."""
        for batch in batch_sizes:
            self.predict(self.zero_feeds(batch))

    def describe(self) -> dict[str, str]:
        """The options this runtime really runs with, for the load log and /metrics (label
        names to values; the same names for every version of a runtime class)."""
        return {}

    def close(self) -> None:  # noqa: B027 - optional hook, most runtimes free memory on GC
        """Release resources (sessions, GPU memory). Called once a version is unloaded, or when
        its load fails after the runtime was made; may run in a worker thread; should not raise."""
