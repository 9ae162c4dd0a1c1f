"""Training as a story: load the data, build the model, train, evaluate, export.

`run_training(TrainConfig(...))` is what `python -m training train` calls. It writes a run directory
`runs/<model>-<dataset>-<time>/` (TensorBoard logs with a confusion-matrix image per epoch,
checkpoints, a CSV log, test metrics as JSON and PNG plots) and publishes the model into the
repository through the parity gate in `training.export`.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import MIRRORING_KINDS, augment_kind
from training.data import (
    Dataset,
    load_dataset,
    make_pipeline,
    stratified_kfold,
    train_validation_split,
)
from training.evaluate import (
    classification_metrics,
    plot_confusion_matrix,
    print_summary,
    write_report,
)
from training.export import MIN_PARITY_IMAGES, ExportRequest, export_model
from training.models import RESNET_STEMS, build_model
from training.quantize import int8_request

CONFUSION_IMAGE_MAX_EXAMPLES = 2000
SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "sgd")
# Keras dtype policies for training. mixed_bfloat16 computes in bfloat16 (oneDNN uses AVX512_BF16
# where the CPU has it) and keeps the variables in float32; the exported model is float32 always.
PRECISIONS = ("float32", "mixed_bfloat16")
EPOCH_LOG = "epoch_times.csv"
CURVE_PNG = "accuracy_over_time.png"


@dataclass
class TrainConfig:
    """Everything one training run depends on (recorded in metadata.json)."""

    model: str = "lenet"
    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam (AdamW with weight decay) or sgd (Nesterov momentum)
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0  # > 0: decoupled decay, scaled by the rate (not on biases or norms)
    label_smoothing: float = 0.0  # > 0: targets smoothed towards uniform by this much
    repository: str = "model_repository"
    runs_dir: str = "runs"
    version: int | None = None
    augment: str | bool = "none"  # none, graph, albumentations, flip_shift; True means graph
    limit: int | None = None
    test_limit: int | None = None
    kfold: int | None = None
    seed: int = 42
    pipeline: str = "tfdata"
    validation_fraction: float = 0.1
    patience: int = 3
    data_dir: str | None = None
    weights: str | None = None
    resnet_side: int = 32
    resnet_stem: str = "imagenet"  # imagenet (Keras' 7x7/2 conv + max-pool) or cifar (3x3/1)
    fused_batch_norm: bool = False  # ResNet50's batch norm on TensorFlow's fused kernel
    precision: str = "float32"  # a Keras dtype policy, see PRECISIONS
    jit_compile: bool = False  # XLA for the train and predict steps
    time_budget_minutes: float | None = None  # stop cleanly before an epoch that would overrun
    export: bool = True
    fp16: bool = True
    int8: bool = False  # also model.int8.onnx, behind its accuracy gate (training.quantize)
    serving_base_path: str = "/models"
    schedule: str = "constant"  # constant, cosine (after warmup_epochs of linear warm-up), plateau
    warmup_epochs: int = 0
    recipe: str | None = None  # the name only; its values are already in the fields above

    def __post_init__(self) -> None:
        self.augment = augment_kind(self.augment)
        if self.augment in MIRRORING_KINDS and self.dataset != "fashion_mnist":
            raise ValueError(
                f"--augment {self.augment} mirrors images; a mirrored character can change "
                f"class, so it is for fashion_mnist only (not {self.dataset})"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {PRECISIONS}")
        if self.resnet_stem not in RESNET_STEMS:
            raise ValueError(f"unknown stem {self.resnet_stem!r}; choose one of {RESNET_STEMS}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), not {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, not {self.weight_decay}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), not {self.label_smoothing}")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    version_dir: Path | None
    metadata: dict[str, Any] | None
    kfold: dict[str, Any] | None
    seconds_per_epoch: float


def set_determinism(seed: int, ops: bool = True) -> None:
    """Same seed, same metrics on the CPU: seeded RNGs and (with `ops`) deterministic TensorFlow
    ops. Keras turns XLA off while op determinism is on, so an XLA run seeds the RNGs only."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if ops:
        tf.config.experimental.enable_op_determinism()
    else:  # a test process may have turned it on for an earlier run; TF exports no public off
        from tensorflow.python.framework import config as tf_config

        tf_config.disable_op_determinism()


def prepare_data(config: TrainConfig) -> Dataset:
    dataset = load_dataset(config.dataset, config.data_dir)
    test_limit = config.test_limit
    if test_limit is None and config.limit is not None:
        # A quick run keeps evaluation quick too, but never below what the parity gate needs.
        test_limit = max(MIN_PARITY_IMAGES, config.limit)
    return dataset.limited(config.limit, test_limit, config.seed)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: a number, or a per-step schedule for `cosine` (paced by the
    time budget when there is one: training.schedules)."""
    import keras

    if config.schedule != "cosine":
        return config.learning_rate  # `plateau` is a callback (make_callbacks)
    warmup = min(config.warmup_epochs, max(config.epochs - 1, 0)) * steps_per_epoch
    total = max(config.epochs * steps_per_epoch, 1)
    if warmup == 0:
        cosine = keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    else:
        cosine = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.learning_rate / 10,
            decay_steps=total - warmup,
            warmup_target=config.learning_rate,
            warmup_steps=warmup,
        )
    if config.time_budget_minutes is None:
        return cosine
    from training.schedules import BudgetPacedSchedule

    return BudgetPacedSchedule(cosine, total)


@contextlib.contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Keras' global dtype policy set to `name` while the block runs (models built in it keep it)."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build(config: TrainConfig, dataset: Dataset) -> Any:
    return build_model(
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        weights=config.weights,
        resnet_side=config.resnet_side,
        resnet_stem=config.resnet_stem,
        fused_batch_norm=config.fused_batch_norm,
    )


#: variables AdamW leaves undecayed (matched as parts of their names): biases and the
#: normalisation layers' scale and offset, which decay would only pull towards zero.
UNDECAYED_VARIABLES = ("bias", "gamma", "beta")


def optimizer_for(config: TrainConfig, steps_per_epoch: int, rate: Any = None) -> Any:
    """The config's optimizer at ``rate`` (a number or schedule), else at the config's
    ``learning_rate(...)``: Adam, AdamW when the config asks for weight decay, or SGD with
    Nesterov momentum. Weight decay is decoupled either way (each step shrinks a weight by
    rate x decay) and spares biases and the normalisation layers' scale and offset."""
    import keras

    rate = learning_rate(config, steps_per_epoch) if rate is None else rate
    decay = config.weight_decay or None
    if config.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(
            rate, momentum=config.momentum, nesterov=config.momentum > 0, weight_decay=decay
        )
    elif decay is None:
        return keras.optimizers.Adam(rate)
    else:
        optimizer = keras.optimizers.AdamW(rate, weight_decay=decay)
    if decay is not None:
        optimizer.exclude_from_weight_decay(var_names=list(UNDECAYED_VARIABLES))
    return optimizer


def loss_for(config: TrainConfig, dataset: Dataset) -> Any:
    """Sparse cross-entropy, with its targets smoothed when the config asks for it."""
    if config.label_smoothing == 0:
        return "sparse_categorical_crossentropy"
    from training.losses import SmoothedSparseCrossentropy

    return SmoothedSparseCrossentropy(config.label_smoothing, dataset.num_classes)


def compile_model(
    config: TrainConfig, dataset: Dataset, steps_per_epoch: int = 1, rate: Any = None
) -> Any:
    with dtype_policy(config.precision):
        model = _build(config, dataset)
    model.compile(
        optimizer=optimizer_for(config, steps_per_epoch, rate),
        loss=loss_for(config, dataset),
        metrics=["accuracy"],
        jit_compile=config.jit_compile,
    )
    return model


def as_float32(model: Any, config: TrainConfig, dataset: Dataset) -> Any:
    """The float32 twin of a model trained under a mixed policy: the same architecture built
    under float32 with the trained weights copied in (mixed policies keep variables in float32,
    so nothing is rounded). A float32 model is returned as it is."""
    if config.precision == "float32":
        return model
    with dtype_policy("float32"):
        twin = _build(config, dataset)
    twin.set_weights(model.get_weights())
    return twin


class EpochClock:
    """A Keras callback factory: per epoch, wall and process-CPU seconds (all threads) next to the
    validation accuracy, in `epoch_times.csv` and an accuracy-over-time PNG, rewritten after every
    epoch so a run that is cut short still has its curve.

    With `budget_seconds` it also keeps training inside that much wall time, cleanly (validation,
    evaluation and export still follow): it stops after an epoch when the median epoch so far
    would not fit in what is left (the median, so that one epoch slowed by a pause or a neighbour
    does not end the run early), and stops mid-epoch, after the current batch, when the budget is
    spent all the same. What it did goes to `time_budget.json`."""

    FIELDS = ("epoch", "wall_s", "cpu_s", "cum_wall_s", "cum_cpu_s", "val_accuracy", "val_loss")

    @staticmethod
    def create(run_dir: Path, budget_seconds: float | None = None) -> Any:
        import keras

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def __init__(self) -> None:
                super().__init__()
                self.rows: list[dict[str, float]] = []

            def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
                self.train_wall, self.train_cpu = time.perf_counter(), time.process_time()

            def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                self.wall, self.cpu = time.perf_counter(), time.process_time()

            def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
                if budget_seconds is None or self.model.stop_training:
                    return
                if time.perf_counter() - self.train_wall > budget_seconds:
                    self._stop(f"mid-epoch, after batch {batch + 1}", mid_epoch=True)

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                now_wall, now_cpu = time.perf_counter(), time.process_time()
                self.rows.append(
                    {
                        "epoch": epoch + 1,
                        "wall_s": round(now_wall - self.wall, 3),
                        "cpu_s": round(now_cpu - self.cpu, 3),
                        "cum_wall_s": round(now_wall - self.train_wall, 3),
                        "cum_cpu_s": round(now_cpu - self.train_cpu, 3),
                        "val_accuracy": float(logs.get("val_accuracy", float("nan"))),
                        "val_loss": float(logs.get("val_loss", float("nan"))),
                    }
                )
                write_epoch_log(run_dir, self.rows)
                if budget_seconds is None or self.model.stop_training:
                    return
                typical = float(np.median([row["wall_s"] for row in self.rows]))
                if now_wall - self.train_wall + typical > budget_seconds:
                    self._stop(f"after epoch {epoch + 1} (median epoch {typical:.0f} s)")

            def _stop(self, when: str, mid_epoch: bool = False) -> None:
                self.model.stop_training = True
                used = time.perf_counter() - self.train_wall
                print(f"time budget: stopping {when}, {used:.0f} s of {budget_seconds:.0f} s used",
                      flush=True)  # fmt: skip
                report = {"budget_s": budget_seconds, "used_s": round(used, 1),
                          "epochs_finished": len(self.rows), "stopped": when,
                          "mid_epoch": mid_epoch}  # fmt: skip
                (run_dir / "time_budget.json").write_text(json.dumps(report, indent=2))

        return Callback()


def write_epoch_log(run_dir: Path, rows: list[dict[str, float]]) -> None:
    """`epoch_times.csv` and `accuracy_over_time.png` (validation accuracy against cumulative
    CPU seconds and against wall seconds) in `run_dir`."""
    with open(run_dir / EPOCH_LOG, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=EpochClock.FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    accuracy = [row["val_accuracy"] * 100 for row in rows]
    for ax, key, label in (
        (axes[0], "cum_cpu_s", "training CPU seconds (process, all threads)"),
        (axes[1], "cum_wall_s", "training wall seconds"),
    ):
        ax.plot([row[key] for row in rows], accuracy, marker="o")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy (%)")
    fig.suptitle("validation accuracy over training time")
    fig.tight_layout()
    fig.savefig(run_dir / CURVE_PNG, dpi=100)
    plt.close(fig)


class ConfusionMatrixImage:
    """A Keras callback factory: a confusion-matrix image per epoch in TensorBoard."""

    @staticmethod
    def create(log_dir: Path, x_val: np.ndarray, y_val: np.ndarray, class_names: list[str]) -> Any:
        import keras
        import tensorflow as tf

        writer = tf.summary.create_file_writer(str(log_dir / "confusion_matrix"))
        x_val, y_val = x_val[:CONFUSION_IMAGE_MAX_EXAMPLES], y_val[:CONFUSION_IMAGE_MAX_EXAMPLES]

        class Callback(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                predicted = self.model.predict(x_val, batch_size=512, verbose=0).argmax(axis=1)
                matrix = classification_metrics(y_val, predicted, class_names)["confusion_matrix"]
                png = plot_confusion_matrix(matrix, class_names)
                image = tf.expand_dims(tf.io.decode_png(png, channels=4), 0)
                with writer.as_default():
                    tf.summary.image("validation confusion matrix", image, step=epoch)

        return Callback()


def make_callbacks(
    run_dir: Path,
    x_val: np.ndarray,
    y_val: np.ndarray,
    class_names: list[str],
    patience: int,
    schedule: str = "constant",
    budget_seconds: float | None = None,
) -> list[Any]:
    import keras

    checkpoints = run_dir / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard"), write_graph=True),
        ConfusionMatrixImage.create(run_dir / "tensorboard", x_val, y_val, class_names),
        keras.callbacks.ModelCheckpoint(
            str(checkpoints / "best_val_loss.keras"), monitor="val_loss", save_best_only=True
        ),
        keras.callbacks.ModelCheckpoint(
            str(checkpoints / "best_val_accuracy.keras"),
            monitor="val_accuracy",
            mode="max",
            save_best_only=True,
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(str(run_dir / "training_log.csv")),
        EpochClock.create(run_dir, budget_seconds),
    ]
    if schedule == "plateau":
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, verbose=1)
        )
    return callbacks


def fit(
    config: TrainConfig,
    dataset: Dataset,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    run_dir: Path,
) -> tuple[Any, dict[str, list[float]], float]:
    """Train one model; return it (float32 whatever the training precision), its history and the
    mean seconds per epoch."""
    set_determinism(config.seed, ops=not config.jit_compile)
    steps_per_epoch = -(-len(y_train) // config.batch_size)
    rate = learning_rate(config, steps_per_epoch)
    model = compile_model(config, dataset, steps_per_epoch, rate)
    if bool(model.jit_compile) != config.jit_compile:  # Keras drops XLA silently when it cannot
        raise RuntimeError(f"asked for jit_compile={config.jit_compile}, Keras compiled with "
                           f"{model.jit_compile}")  # fmt: skip
    train_data = make_pipeline(
        config.pipeline, x_train, y_train, config.batch_size,
        shuffle=True, augment=config.augment, seed=config.seed,
    )  # fmt: skip
    val_data = make_pipeline(
        config.pipeline, x_val, y_val, 512, shuffle=False, augment=False, seed=config.seed
    )
    budget = None if config.time_budget_minutes is None else config.time_budget_minutes * 60
    callbacks = make_callbacks(
        run_dir, x_val, y_val, dataset.class_names, config.patience, config.schedule, budget
    )
    if budget is not None and config.schedule == "cosine":
        from training.schedules import BudgetPace

        callbacks.append(BudgetPace(rate, budget))
        print(f"time budget: the cosine decay ends with the {budget / 60:g}-minute budget or "
              f"after epoch {config.epochs}, whichever comes first", flush=True)  # fmt: skip
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        shuffle=False,  # the pipelines shuffle themselves, reproducibly
        callbacks=callbacks,
        verbose=1 if sys.stdout.isatty() else 2,
    )
    epochs_run = max(1, len(history.history.get("loss", [])))
    seconds = (time.perf_counter() - started) / epochs_run
    return as_float32(model, config, dataset), history.history, seconds


def evaluate_model(model: Any, dataset: Dataset) -> dict[str, Any]:
    probabilities = model.predict(dataset.x_test, batch_size=512, verbose=0)
    return classification_metrics(dataset.y_test, probabilities.argmax(axis=1), dataset.class_names)


def run_training(config: TrainConfig) -> TrainResult:
    """Load, build, train (optionally k-fold), evaluate, export. Prints progress and a summary."""
    dataset = prepare_data(config)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(config.runs_dir) / f"{config.model}-{config.dataset}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"data: {dataset.name} from {dataset.source}: {len(dataset.y_train)} train, "
        f"{len(dataset.y_test)} test images {dataset.x_train.shape[1:]}; run dir {run_dir}",
        flush=True,
    )
    kfold_report = None
    if config.kfold:
        model, history, seconds_per_epoch, kfold_report = _train_kfold(config, dataset, run_dir)
    else:
        x_train, y_train, x_val, y_val = train_validation_split(
            dataset.x_train, dataset.y_train, config.validation_fraction, config.seed
        )
        model, history, seconds_per_epoch = fit(
            config, dataset, x_train, y_train, x_val, y_val, run_dir
        )

    metrics = evaluate_model(model, dataset)
    write_report(run_dir, metrics, dataset.class_names, history)
    (run_dir / "config.json").write_text(json.dumps(asdict(config), indent=2))
    # What the run cost and what it trained, for tables that compare runs (training/compare.py).
    summary = {
        "seconds_per_epoch": seconds_per_epoch,
        "epochs_run": len(history.get("loss", [])),
        "parameters": int(model.count_params()),
        "train_images": len(dataset.y_train),
        "test_images": len(dataset.y_test),
        **_epoch_times(run_dir),
        **_time_budget(run_dir),
        # Linux reports kilobytes: the process's peak resident memory so far (training included).
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    (run_dir / "run_summary.json").write_text(json.dumps(summary, indent=2))
    print_summary(f"{config.model} on {config.dataset} (test set)", metrics, dataset.class_names)
    print(f"seconds per epoch: {seconds_per_epoch:.1f}", flush=True)
    if kfold_report:
        print(
            f"{config.kfold}-fold accuracy: {kfold_report['accuracy_mean'] * 100:.2f}% "
            f"± {kfold_report['accuracy_std'] * 100:.2f}",
            flush=True,
        )

    version_dir = metadata = None
    if config.export:
        version_dir, metadata = export_trained(model, config, dataset, metrics, seconds_per_epoch)
        _print_export(version_dir, metadata)
    print(f"run artifacts: {run_dir} (tensorboard --logdir {run_dir / 'tensorboard'})", flush=True)
    return TrainResult(run_dir, metrics, version_dir, metadata, kfold_report, seconds_per_epoch)


def _epoch_times(run_dir: Path) -> dict[str, float]:
    """Wall and CPU seconds per epoch from the epoch log: the first epoch (which also traces,
    and with XLA compiles) apart from the mean of the others."""
    path = run_dir / EPOCH_LOG
    if not path.is_file():
        return {}
    with open(path) as stream:
        rows = list(csv.DictReader(stream))
    times: dict[str, float] = {
        "first_epoch_wall_s": float(rows[0]["wall_s"]),
        "first_epoch_cpu_s": float(rows[0]["cpu_s"]),
        "train_wall_s": float(rows[-1]["cum_wall_s"]),
        "train_cpu_s": float(rows[-1]["cum_cpu_s"]),
    }
    if len(rows) > 1:
        times["later_epochs_wall_s"] = float(np.mean([float(r["wall_s"]) for r in rows[1:]]))
        times["later_epochs_cpu_s"] = float(np.mean([float(r["cpu_s"]) for r in rows[1:]]))
    return times


def _time_budget(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "time_budget.json"
    return {"time_budget_stop": json.loads(path.read_text())} if path.is_file() else {}


def _train_kfold(
    config: TrainConfig, dataset: Dataset, run_dir: Path
) -> tuple[Any, dict[str, list[float]], float, dict[str, Any]]:
    """K stratified folds of the training set; the best fold's model (validation accuracy) wins.

    A time budget covers all folds: each fold gets an equal share of what is left when it starts,
    so a fold that stops early leaves its time to the ones after it."""
    assert config.kfold
    folds: list[dict[str, Any]] = []
    best: tuple[float, Any, dict[str, list[float]]] | None = None
    seconds = []
    started = time.perf_counter()
    for index, (train_rows, val_rows) in enumerate(
        stratified_kfold(dataset.y_train, config.kfold, config.seed)
    ):
        print(f"fold {index + 1}/{config.kfold}", flush=True)
        fold_dir = run_dir / f"fold-{index + 1}"
        fold_config = config
        if config.time_budget_minutes is not None:
            left_minutes = config.time_budget_minutes - (time.perf_counter() - started) / 60
            share = max(left_minutes, 0.0) / (config.kfold - index)
            fold_config = replace(config, time_budget_minutes=share)
            print(f"fold {index + 1}: time budget {share * 60:.0f} s", flush=True)
        model, history, seconds_per_epoch = fit(
            fold_config, dataset,
            dataset.x_train[train_rows], dataset.y_train[train_rows],
            dataset.x_train[val_rows], dataset.y_train[val_rows],
            fold_dir,
        )  # fmt: skip
        seconds.append(seconds_per_epoch)
        metrics = evaluate_model(model, dataset)
        val_accuracy = max(history.get("val_accuracy", [0.0]))
        folds.append(
            {
                "fold": index + 1,
                "val_accuracy": val_accuracy,
                "test_accuracy": metrics["accuracy"],
                "test_macro_f1": metrics["macro_f1"],
            }
        )
        if best is None or val_accuracy > best[0]:
            best = (val_accuracy, model, history)
    assert best is not None
    accuracies = np.array([f["test_accuracy"] for f in folds])
    f1s = np.array([f["test_macro_f1"] for f in folds])
    report = {
        "folds": folds,
        "accuracy_mean": float(accuracies.mean()),
        "accuracy_std": float(accuracies.std()),
        "macro_f1_mean": float(f1s.mean()),
        "macro_f1_std": float(f1s.std()),
        "exported": "the fold with the best validation accuracy",
    }
    (run_dir / "kfold.json").write_text(json.dumps(report, indent=2))
    return best[1], best[2], float(np.mean(seconds)), report


def export_trained(
    model: Any,
    config: TrainConfig,
    dataset: Dataset,
    metrics: dict[str, Any],
    seconds_per_epoch: float,
) -> tuple[Path, dict[str, Any]]:
    print("export: SavedModel, ONNX fp32/fp16, parity gate ...", flush=True)
    preprocessing: dict[str, Any] = {}
    if config.model == "resnet50":
        preprocessing["resize"] = (
            f"inside the model to {config.resnet_side}x{config.resnet_side} RGB"
        )
        preprocessing["stem"] = config.resnet_stem
    request = ExportRequest(
        model_name=config.model,
        dataset=dataset.name,
        class_names=dataset.class_names,
        parity_images=dataset.x_test[: max(MIN_PARITY_IMAGES, min(len(dataset.x_test), 2000))],
        metrics=metrics,
        seed=config.seed,
        dataset_fingerprint=dataset.fingerprint(),
        preprocessing=preprocessing,
        training={**asdict(config), "seconds_per_epoch": round(seconds_per_epoch, 2)},
        fp16=config.fp16,
        int8=int8_request(dataset, config.seed) if config.int8 else None,
    )
    return export_model(
        model, request, Path(config.repository), config.version, config.serving_base_path
    )


def _print_export(version_dir: Path, metadata: dict[str, Any]) -> None:
    parity = metadata["parity"]
    line = (
        f"published {version_dir}: parity fp32 max|diff| {parity['fp32']['max_abs_diff']:.2g}, "
        f"agreement {parity['fp32']['argmax_agreement'] * 100:.2f}%"
    )
    if "fp16" in parity:
        fp16 = parity["fp16"]
        line += (
            f"; fp16 max|diff| {fp16['max_abs_diff']:.2g}, agreement "
            f"{fp16['argmax_agreement'] * 100:.2f}%"
        )
        if "dropped" in fp16:
            line += f" (fp16 file dropped: {fp16['dropped']})"
    if "int8" in metadata:
        int8 = metadata["int8"]
        line += (
            f"; int8 accuracy {int8['gate']['accuracy_int8'] * 100:.2f}% against fp32's "
            f"{int8['gate']['accuracy_fp32'] * 100:.2f}%"
        )
        if "dropped" in int8:
            line += " (int8 file dropped: more than allowed below fp32)"
    print(line, flush=True)
