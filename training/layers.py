"""Layers the trainer builds beyond Keras' own.

Imported when a model is built with one of them and before a checkpoint is loaded, so that Keras
finds the registered class by name in a saved ``.keras`` file.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="training")
class FusedBatchNormalization(keras.layers.BatchNormalization):  # type: ignore[misc]
    """Keras' BatchNormalization, trained with TensorFlow's fused kernel (``FusedBatchNormV3``).

    Keras 3 normalises a training batch with separate ops (cast to float32, mean, variance,
    scale and shift, cast back), each a pass over the activations; TensorFlow's fused kernel does
    it in one, in the layer's compute dtype (bfloat16 too) with float32 statistics. On this
    project's 2-core CPU that took ResNet50's training step from about 620 to 515 ms of CPU
    (benchmarks/RESULTS.md). The moving statistics are updated as Keras does (the biased batch
    variance, the layer's momentum); inference, and so the exported graph, is Keras' own code.
    Other cases (masks, channels not last, other backends) are Keras' own code too.

    Equal to Keras' layer step for step (tests/training/test_layers.py), yet over whole epochs of
    ResNet50 under mixed_bfloat16 it learned worse, so models use it only when asked
    (``--fused-batch-norm``).
    """

    def call(self, inputs: Any, training: Any = None, mask: Any = None) -> Any:
        fused = (
            training
            and self.trainable
            and mask is None
            and self.axis in (-1, len(inputs.shape) - 1)
            and len(inputs.shape) == 4
            and keras.backend.backend() == "tensorflow"
        )
        if not fused:
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # Without gamma (scale=False) or beta (center=False) the kernel still takes them: 1 and 0.
        scale = tf.cast(self.gamma, tf.float32) if self.scale else tf.ones_like(self.moving_mean)
        offset = tf.cast(self.beta, tf.float32) if self.center else tf.zeros_like(self.moving_mean)
        outputs, mean, variance, *_ = tf.raw_ops.FusedBatchNormV3(
            x=inputs,
            scale=scale,
            offset=offset,
            mean=tf.constant([], tf.float32),
            variance=tf.constant([], tf.float32),
            epsilon=self.epsilon,
            exponential_avg_factor=1.0,
            data_format="NHWC",
            is_training=True,
        )
        # The kernel returns the unbiased (n - 1) variance for the moving average; Keras keeps
        # the biased one, which is also what the batch was normalised with.
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
        variance = variance * (count - 1.0) / count
        momentum = self.momentum
        self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
        self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
        return outputs
