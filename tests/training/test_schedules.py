"""The cosine schedule paced by the time budget (training/schedules.py)."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import pytest

from training.schedules import BudgetPacedSchedule
from training.train import TrainConfig, learning_rate, run_training

TOTAL = 40


def cosine() -> keras.optimizers.schedules.CosineDecay:
    return keras.optimizers.schedules.CosineDecay(
        1e-4, decay_steps=TOTAL - 10, warmup_target=1e-3, warmup_steps=10
    )


def rate(schedule: keras.optimizers.schedules.LearningRateSchedule, step: int) -> float:
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_unpaced_it_is_the_schedule_it_wraps_to_the_bit() -> None:
    plain, paced = cosine(), BudgetPacedSchedule(cosine(), TOTAL)
    assert [rate(paced, step) for step in range(TOTAL + 5)] == [
        rate(plain, step) for step in range(TOTAL + 5)
    ]


def test_it_follows_whichever_is_further_along_the_step_or_the_clock() -> None:
    plain, paced = cosine(), BudgetPacedSchedule(cosine(), TOTAL)
    paced.pace(0.5)  # half the budget spent: the step it stands for is 20
    assert rate(paced, 5) == rate(plain, 20)  # the clock leads
    assert rate(paced, 30) == rate(plain, 30)  # the steps lead
    paced.pace(3.0)  # past the budget: the decay's end, not beyond it
    assert rate(paced, 5) == rate(plain, TOTAL) == pytest.approx(0.0, abs=1e-12)
    paced.pace(-1.0)
    assert rate(paced, 5) == rate(plain, 5)


def test_only_a_cosine_with_a_budget_is_paced_and_it_survives_serialization() -> None:
    config = TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1, time_budget_minutes=5)
    schedule = learning_rate(config, steps_per_epoch=10)
    assert isinstance(schedule, BudgetPacedSchedule) and schedule.total_steps == TOTAL
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert isinstance(copy, BudgetPacedSchedule)
    assert [rate(copy, step) for step in (0, 10, 25, 40)] == [
        rate(schedule, step) for step in (0, 10, 25, 40)
    ]
    no_budget = TrainConfig(epochs=4, schedule="cosine", warmup_epochs=1)
    assert not isinstance(learning_rate(no_budget, 10), BudgetPacedSchedule)
    assert learning_rate(TrainConfig(time_budget_minutes=5), 10) == TrainConfig().learning_rate
    with pytest.raises(ValueError, match="total_steps must be at least 1"):
        BudgetPacedSchedule(cosine(), 0)


def test_a_run_cut_by_its_budget_still_ends_its_decay(tmp_path: Path, capsys) -> None:
    # Far more epochs than fit in 12 s, and no early stopping: the budget ends the run, and the
    # cosine, spread over 10,000 epochs by the steps, must have followed the clock to its end.
    config = TrainConfig(
        model="mlp", dataset="mnist", epochs=10_000, patience=10_000, limit=1000,
        test_limit=1000, export=False, schedule="cosine", learning_rate=1e-2,
        time_budget_minutes=0.2, runs_dir=str(tmp_path / "runs"), seed=3,
    )  # fmt: skip
    result = run_training(config)
    lines = re.findall(r"pace: epoch (\d+): .* (\d+)% of the budget; the decay follows "
                       r"(the clock|the steps) \(learning rate (\S+)\)", capsys.readouterr().out)  # fmt: skip
    assert lines, "no pace: line printed"
    epoch, budget_percent, leader, last_rate = lines[-1]
    assert int(epoch) < 10_000 and leader == "the clock"
    assert int(budget_percent) >= 60  # its last batch began with most of the budget spent
    assert float(last_rate) < 0.15 * config.learning_rate  # cos(0.6 pi) decay: 0.095 of the peak
    checkpoint = result.run_dir / "checkpoints" / "best_val_loss.keras"
    loaded = keras.models.load_model(checkpoint)
    assert loaded.optimizer.get_config()["learning_rate"]["class_name"] == "BudgetPacedSchedule"


def test_a_budget_that_is_not_reached_changes_nothing(tmp_path: Path) -> None:
    def run(budget: float | None) -> dict:
        config = TrainConfig(
            model="mlp", dataset="mnist", epochs=2, limit=1000, test_limit=1000, export=False,
            schedule="cosine", warmup_epochs=1, learning_rate=3e-3, time_budget_minutes=budget,
            runs_dir=str(tmp_path / "runs"), seed=4,
        )  # fmt: skip
        return run_training(config).metrics

    assert run(60.0) == run(None)
