"""A learning-rate schedule paced by a time budget, so that a cut run still finishes its decay.

With ``--time-budget`` the trainer stops before an epoch that would overrun (train.EpochClock).
A cosine decay spread over ``--epochs`` then ends wherever the machine's speed cuts it: on a
shared machine a run planned for 20 epochs that fitted 13 stopped at a third of the peak rate,
and lost 1.9 points of accuracy to that (benchmarks/RESULTS.md). :class:`BudgetPacedSchedule`
evaluates the schedule at whichever is further along, the step or the share of the budget spent,
and :class:`BudgetPace` (a callback) tells it the time. While the steps lead, the rate is the
plain schedule's, to the bit; once the clock leads, the decay follows the clock and reaches its
end as the budget does, however many epochs fit.

Imported when such a model is compiled and before a checkpoint is loaded, so that Keras finds
the registered class by name in a saved ``.keras`` file.
"""

from __future__ import annotations

import time
from typing import Any

import keras


@keras.saving.register_keras_serializable(package="training")
class BudgetPacedSchedule(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc]
    """``inner(max(step, paced_step))``: ``paced_step`` is the step the time spent stands for
    (``total_steps`` times the share of the budget used), set between steps by BudgetPace."""

    def __init__(self, inner: Any, total_steps: int) -> None:
        super().__init__()
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, not {total_steps}")
        self.inner = inner
        self.total_steps = int(total_steps)
        # Not part of the config: a loaded schedule starts unpaced (its clock is not running).
        self.paced_step = keras.Variable(0.0, dtype="float32", trainable=False, name="paced_step")

    def __call__(self, step: Any) -> Any:
        return self.inner(keras.ops.maximum(keras.ops.cast(step, "float32"), self.paced_step))

    def pace(self, budget_share: float) -> None:
        """Mark ``budget_share`` (0 to 1) of the budget as spent."""
        self.paced_step.assign(min(max(budget_share, 0.0), 1.0) * self.total_steps)

    def get_config(self) -> dict[str, Any]:
        return {
            "inner": keras.saving.serialize_keras_object(self.inner),
            "total_steps": self.total_steps,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BudgetPacedSchedule:
        inner = keras.saving.deserialize_keras_object(config["inner"])
        return cls(inner, config["total_steps"])


class BudgetPace(keras.callbacks.Callback):  # type: ignore[misc]
    """Before every training step, tells ``schedule`` the share of ``budget_seconds`` spent since
    training began (validation included, as the budget counts it), and prints where the decay
    stands after every epoch."""

    def __init__(self, schedule: BudgetPacedSchedule, budget_seconds: float) -> None:
        super().__init__()
        if budget_seconds <= 0:
            raise ValueError(f"budget_seconds must be positive, not {budget_seconds}")
        self.schedule = schedule
        self.budget_seconds = float(budget_seconds)
        self.started = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()
        self.schedule.pace(0.0)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.schedule.pace((time.perf_counter() - self.started) / self.budget_seconds)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        paced = float(self.schedule.paced_step.numpy())
        rate = float(keras.ops.convert_to_numpy(self.schedule(step)))
        leader = "the clock" if paced > step else "the steps"
        print(
            f"pace: epoch {epoch + 1}: {step / self.schedule.total_steps:.0%} of the steps, "
            f"{paced / self.schedule.total_steps:.0%} of the budget; the decay follows {leader} "
            f"(learning rate {rate:.3g})",
            flush=True,
        )
