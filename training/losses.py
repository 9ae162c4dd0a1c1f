"""Losses the trainer may compile with beyond Keras' own strings.

Imported when a model is compiled with one of them and before a checkpoint is loaded, so that
Keras finds the registered class by name in a saved ``.keras`` file.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="training")
class SmoothedSparseCrossentropy(keras.losses.Loss):  # type: ignore[misc]
    """Cross-entropy of integer labels against targets smoothed towards uniform.

    The target of class ``y`` is ``1 - label_smoothing + label_smoothing / classes`` and every
    other class gets ``label_smoothing / classes`` (Szegedy et al. 2016, as Keras'
    ``CategoricalCrossentropy(label_smoothing=...)`` does for one-hot labels, which Keras'
    sparse loss does not offer). The model's outputs are probabilities.
    """

    def __init__(
        self,
        label_smoothing: float,
        classes: int,
        name: str = "smoothed_sparse_crossentropy",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), not {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.classes = int(classes)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        targets = keras.ops.one_hot(labels, self.classes, dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(
            targets, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "classes": self.classes,
        }
