"""The course's comparison: MLP vs LeNet on MNIST and Fashion-MNIST, one budget, one table.

`python -m training compare --runs-dir DIR --train` trains every (model, dataset) pair with the
same fixed budget (make demo's: 8 epochs, cosine decay from 3e-3 after one warm-up epoch, no
augmentation, seed 42) and no export, then tables the run directories; without `--train` it
tables the newest existing run of each pair in DIR. The metrics are the ones training wrote
(`test_metrics.json`, from training/evaluate.py) with the cost in `run_summary.json`; nothing is
re-evaluated here. Output: a Markdown table (accuracy, macro F1, errors, seconds per epoch,
parameters) and per-class F1 tables, one per dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.recipes import resolve

MODELS = ("mlp", "lenet")
DATASETS = ("mnist", "fashion_mnist")
# One budget for every pair, so the models are compared on equal terms: the demo recipe's
# settings (chosen for LeNet on MNIST; applied unchanged to the MLP and to Fashion-MNIST).
BUDGET: dict[str, Any] = resolve("demo", "lenet", "mnist", {})[0]
# Settings that must match between runs for the table to be a fair comparison.
BUDGET_KEYS = ("epochs", "batch_size", "learning_rate", "schedule", "warmup_epochs", "augment",
               "patience", "seed", "validation_fraction", "limit", "test_limit")  # fmt: skip
LABELS = {"mlp": "MLP", "lenet": "LeNet", "mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


class MissingRun(LookupError):
    """No run directory for a (model, dataset) pair."""


@dataclass(frozen=True)
class RunRecord:
    """What one run directory says about its run."""

    run_dir: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]

    @property
    def model(self) -> str:
        return str(self.config["model"])

    @property
    def dataset(self) -> str:
        return str(self.config["dataset"])

    @property
    def errors(self) -> int:
        """Misclassified test images (exact: accuracy times the count is a whole number)."""
        return round((1.0 - self.metrics["accuracy"]) * self.metrics["examples"])


def read_run(run_dir: Path) -> RunRecord:
    """A run directory written by `run_training` (config.json, test_metrics.json, run_summary.json)."""

    def load(name: str) -> dict[str, Any]:
        path = run_dir / name
        return json.loads(path.read_text()) if path.is_file() else {}

    return RunRecord(run_dir, load("config.json"), load("test_metrics.json"),
                     load("run_summary.json"))  # fmt: skip


def find_runs(
    runs_dir: Path, models: tuple[str, ...] = MODELS, datasets: tuple[str, ...] = DATASETS
) -> dict[tuple[str, str], RunRecord]:
    """The newest complete run of each (model, dataset) pair under `runs_dir` (by directory
    name, which ends in the start time); raises MissingRun naming the pairs that have none."""
    found: dict[tuple[str, str], RunRecord] = {}
    candidates = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for path in candidates:
        record = read_run(path)
        if not record.config or not record.metrics:
            continue  # unfinished or not a run directory
        key = (record.model, record.dataset)
        if key[0] in models and key[1] in datasets:
            found[key] = record  # sorted by name: the newest wins
    missing = [f"{m} on {d}" for d in datasets for m in models if (m, d) not in found]
    if missing:
        raise MissingRun(
            f"no finished run in {runs_dir} for {', '.join(missing)}; "
            "train them with `python -m training compare --train`"
        )
    return found


def train_pairs(
    runs_dir: Path,
    models: tuple[str, ...] = MODELS,
    datasets: tuple[str, ...] = DATASETS,
    **overrides: Any,
) -> dict[tuple[str, str], RunRecord]:
    """Train every pair with BUDGET (plus `overrides`, e.g. a `limit` for quick runs), no export."""
    from training.train import TrainConfig, run_training

    settings = {**BUDGET, **overrides}
    records = {}
    for dataset in datasets:
        for model in models:
            print(f"compare: training {model} on {dataset}", flush=True)
            config = TrainConfig(model=model, dataset=dataset, runs_dir=str(runs_dir),
                                 export=False, recipe=None, **settings)  # fmt: skip
            result = run_training(config)
            records[(model, dataset)] = read_run(result.run_dir)
    return records


def budget_differences(records: dict[tuple[str, str], RunRecord]) -> list[str]:
    """Settings that differ between the runs ("epochs: 8, 5"): a table over them is not fair."""
    differences = []
    for key in BUDGET_KEYS:
        values = sorted({json.dumps(r.config.get(key)) for r in records.values()})
        if len(values) > 1:
            differences.append(f"{key}: {', '.join(values)}")
    return differences


def _budget_line(record: RunRecord) -> str:
    c = record.config
    line = (f"{c.get('epochs')} epochs, batch {c.get('batch_size')}, Adam {c.get('learning_rate')} "
            f"{c.get('schedule')}")  # fmt: skip
    if c.get("schedule") == "cosine" and c.get("warmup_epochs"):
        line += f" after {c['warmup_epochs']} warm-up epoch(s)"
    line += f", augment {c.get('augment')}, patience {c.get('patience')}, seed {c.get('seed')}"
    if c.get("limit"):
        line += f", {c['limit']} training images"
    return line


def markdown(records: dict[tuple[str, str], RunRecord]) -> str:
    """The comparison table, then one per-class F1 table per dataset."""
    ordered = sorted(records.values(), key=lambda r: (
        DATASETS.index(r.dataset) if r.dataset in DATASETS else 99,
        MODELS.index(r.model) if r.model in MODELS else 99,
    ))  # fmt: skip
    lines = ["| model | dataset | test accuracy | macro F1 | errors | s/epoch | epochs run "
             "| parameters | run |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in ordered:
        s = r.summary
        seconds = f"{s['seconds_per_epoch']:.1f}" if "seconds_per_epoch" in s else "n/a"
        params = f"{s['parameters']:,}" if "parameters" in s else "n/a"
        lines.append(
            f"| {LABELS.get(r.model, r.model)} | {LABELS.get(r.dataset, r.dataset)} "
            f"| {r.metrics['accuracy'] * 100:.2f}% | {r.metrics['macro_f1']:.4f} "
            f"| {r.errors:,} / {r.metrics['examples']:,} | {seconds} | {s.get('epochs_run', 'n/a')} "
            f"| {params} | `{r.run_dir.name}` |"
        )
    differences = budget_differences(records)
    lines.append("")
    if differences:
        lines.append("**Not one budget**: the runs differ in " + "; ".join(differences) + ".")
    elif ordered:
        lines.append(f"Budget, the same for every run: {_budget_line(ordered[0])}.")
    for dataset in dict.fromkeys(r.dataset for r in ordered):
        runs = [r for r in ordered if r.dataset == dataset]
        names = list(runs[0].metrics["per_class"])
        lines += ["", f"Per-class F1, {LABELS.get(dataset, dataset)}:", "",
                  "| class | " + " | ".join(LABELS.get(r.model, r.model) for r in runs) + " |",
                  "|---" * (len(runs) + 1) + "|"]  # fmt: skip
        for name in names:
            cells = [f"{r.metrics['per_class'][name]['f1']:.4f}" for r in runs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def compare(
    runs_dir: Path,
    train: bool = False,
    out: Path | None = None,
    models: tuple[str, ...] = MODELS,
    datasets: tuple[str, ...] = DATASETS,
    **overrides: Any,
) -> str:
    """Train (optionally) and table the pairs; write the Markdown to `out` when given."""
    if train:
        records = train_pairs(runs_dir, models, datasets, **overrides)
    else:
        records = find_runs(runs_dir, models, datasets)
    text = markdown(records)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
