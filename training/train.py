"""Training as a story: load the data, build the model, train, evaluate, export.

`run_training(TrainConfig(...))` is what `python -m training train` calls. It writes a run directory
`runs/<model>-<dataset>-<time>/` (TensorBoard logs with a confusion-matrix image per epoch,
checkpoints, a CSV log, test metrics as JSON and PNG plots) and publishes the model into the
repository through the parity gate in `training.export`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.augment import augment_kind
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
from training.models import build_model

CONFUSION_IMAGE_MAX_EXAMPLES = 2000
SCHEDULES = ("constant", "cosine", "plateau")


@dataclass
class TrainConfig:
    """Everything one training run depends on (recorded in metadata.json)."""

    model: str = "lenet"
    dataset: str = "mnist"
    epochs: int = 5
    batch_size: int = 128
    learning_rate: float = 1e-3
    repository: str = "model_repository"
    runs_dir: str = "runs"
    version: int | None = None
    augment: str | bool = "none"  # none, graph or albumentations; True means graph
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
    export: bool = True
    fp16: bool = True
    serving_base_path: str = "/models"
    schedule: str = "constant"  # constant, cosine (after warmup_epochs of linear warm-up), plateau
    warmup_epochs: int = 0
    recipe: str | None = None  # the name only; its values are already in the fields above

    def __post_init__(self) -> None:
        self.augment = augment_kind(self.augment)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {SCHEDULES}")


@dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]
    version_dir: Path | None
    metadata: dict[str, Any] | None
    kfold: dict[str, Any] | None
    seconds_per_epoch: float


def set_determinism(seed: int) -> None:
    """Same seed, same metrics on the CPU: seeded RNGs and deterministic TensorFlow ops."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def prepare_data(config: TrainConfig) -> Dataset:
    dataset = load_dataset(config.dataset, config.data_dir)
    test_limit = config.test_limit
    if test_limit is None and config.limit is not None:
        # A quick run keeps evaluation quick too, but never below what the parity gate needs.
        test_limit = max(MIN_PARITY_IMAGES, config.limit)
    return dataset.limited(config.limit, test_limit, config.seed)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> Any:
    """The optimizer's learning rate: a number, or a per-step schedule for `cosine`."""
    import keras

    if config.schedule != "cosine":
        return config.learning_rate  # `plateau` is a callback (make_callbacks)
    warmup = min(config.warmup_epochs, max(config.epochs - 1, 0)) * steps_per_epoch
    total = max(config.epochs * steps_per_epoch, 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(config.learning_rate, total)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10,
        decay_steps=total - warmup,
        warmup_target=config.learning_rate,
        warmup_steps=warmup,
    )


def compile_model(config: TrainConfig, dataset: Dataset, steps_per_epoch: int = 1) -> Any:
    import keras

    model = build_model(
        config.model,
        dataset.input_shape,
        dataset.num_classes,
        weights=config.weights,
        resnet_side=config.resnet_side,
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate(config, steps_per_epoch)),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


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
    """Train one model; return it, its history and the mean seconds per epoch."""
    set_determinism(config.seed)
    steps_per_epoch = -(-len(y_train) // config.batch_size)
    model = compile_model(config, dataset, steps_per_epoch)
    train_data = make_pipeline(
        config.pipeline, x_train, y_train, config.batch_size,
        shuffle=True, augment=config.augment, seed=config.seed,
    )  # fmt: skip
    val_data = make_pipeline(
        config.pipeline, x_val, y_val, 512, shuffle=False, augment=False, seed=config.seed
    )
    started = time.perf_counter()
    history = model.fit(
        train_data,
        validation_data=val_data,
        epochs=config.epochs,
        shuffle=False,  # the pipelines shuffle themselves, reproducibly
        callbacks=make_callbacks(
            run_dir, x_val, y_val, dataset.class_names, config.patience, config.schedule
        ),
        verbose=1 if sys.stdout.isatty() else 2,
    )
    epochs_run = max(1, len(history.history.get("loss", [])))
    return model, history.history, (time.perf_counter() - started) / epochs_run


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


def _train_kfold(
    config: TrainConfig, dataset: Dataset, run_dir: Path
) -> tuple[Any, dict[str, list[float]], float, dict[str, Any]]:
    """K stratified folds of the training set; the best fold's model (validation accuracy) wins."""
    assert config.kfold
    folds: list[dict[str, Any]] = []
    best: tuple[float, Any, dict[str, list[float]]] | None = None
    seconds = []
    for index, (train_rows, val_rows) in enumerate(
        stratified_kfold(dataset.y_train, config.kfold, config.seed)
    ):
        print(f"fold {index + 1}/{config.kfold}", flush=True)
        fold_dir = run_dir / f"fold-{index + 1}"
        model, history, seconds_per_epoch = fit(
            config, dataset,
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
    print(line, flush=True)
