"""Model runtimes: numpy in, numpy out. ``base.ModelRuntime`` is the interface."""

from serving.runtimes.base import ModelRuntime, TensorSpec

__all__ = ["ModelRuntime", "TensorSpec"]
