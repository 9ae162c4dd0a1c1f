"""`python -m training compare`: trains the pairs with one budget and tables the run directories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.__main__ import main
from training.compare import BUDGET, MissingRun, compare, find_runs, markdown


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """MLP and LeNet on 1,000 MNIST images, one epoch, through the command line, run from a
    temporary working directory: the runs record the default repository, `model_repository`
    relative to it, and "no export" is checked there, not in the checkout (where `make demo`
    has just published a LeNet)."""
    root = tmp_path_factory.mktemp("compare")
    runs = root / "runs"
    out = runs / "compare.md"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        status = main(["compare", "--runs-dir", str(runs), "--train", "--datasets", "mnist",
                       "--epochs", "1", "--limit", "1000", "--out", str(out)])  # fmt: skip
    assert status == 0
    return runs, out.read_text()


def test_trains_both_models_with_one_budget(compared: tuple[Path, str]) -> None:
    runs, _ = compared
    root = runs.parent
    records = find_runs(runs, datasets=("mnist",))
    assert set(records) == {("mlp", "mnist"), ("lenet", "mnist")}
    for record in records.values():
        config = record.config
        assert config["epochs"] == 1 and config["limit"] == 1000 and config["export"] is False
        for key in ("learning_rate", "schedule", "warmup_epochs", "batch_size", "augment"):
            assert config[key] == BUDGET[key]
        repository = root / config["repository"]  # relative: the fixture's working directory
        assert repository.parent == root and not repository.exists()  # no export
        # The plots every run directory gets, as real PNG files.
        for name in ("test_confusion_matrix.png", "test_per_class.png"):
            assert (record.run_dir / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lenet, mlp = records[("lenet", "mnist")].summary, records[("mlp", "mnist")].summary
    assert lenet["epochs_run"] == mlp["epochs_run"] == 1
    assert lenet["seconds_per_epoch"] > 0 and mlp["seconds_per_epoch"] > 0
    assert (
        lenet["parameters"] != mlp["parameters"]
        and min(lenet["parameters"], mlp["parameters"]) > 1000
    )


def test_table_holds_what_the_runs_measured(compared: tuple[Path, str]) -> None:
    runs, text = compared
    records = find_runs(runs, datasets=("mnist",))
    for (model, _), record in records.items():
        metrics = json.loads((record.run_dir / "test_metrics.json").read_text())
        wrong = sum(
            count
            for i, row in enumerate(metrics["confusion_matrix"])
            for j, count in enumerate(row)
            if i != j
        )
        assert record.errors == wrong
        row = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {'MLP' if model == 'mlp' else 'LeNet'} | MNIST |")
        )
        assert f"{metrics['accuracy'] * 100:.2f}%" in row
        assert f"{wrong:,} / {metrics['examples']:,}" in row
        assert f"{record.summary['parameters']:,}" in row
    assert "Budget, the same for every run: 1 epochs" in text
    assert "Per-class F1, MNIST:" in text
    per_class = text.split("Per-class F1, MNIST:")[1]
    assert per_class.count("\n| ") == 1 + 10  # header and one row per digit
    # Without --train the same runs give the same table.
    assert compare(runs, datasets=("mnist",)) == text


def test_runs_with_different_budgets_are_flagged(
    compared: tuple[Path, str], tmp_path: Path
) -> None:
    runs, _ = compared
    records = find_runs(runs, datasets=("mnist",))
    lenet = records[("lenet", "mnist")]
    changed = {**records, ("lenet", "mnist"): type(lenet)(
        lenet.run_dir, {**lenet.config, "epochs": 5}, lenet.metrics, lenet.summary)}  # fmt: skip
    text = markdown(changed)
    assert "**Not one budget**: the runs differ in epochs: 1, 5." in text
    assert "Budget, the same" not in text


def test_missing_pairs_are_named(
    compared: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    runs, _ = compared
    with pytest.raises(MissingRun, match="mlp on fashion_mnist, lenet on fashion_mnist"):
        find_runs(runs)
    assert main(["compare", "--runs-dir", str(runs)]) == 2
    assert "compare --train" in capsys.readouterr().err
