"""`python -m training {train,export,demo,compare}`: train and export models into a model repository."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.augment import AUGMENT_KINDS
from training.compare import DATASETS as COMPARE_DATASETS
from training.compare import MODELS as COMPARE_MODELS
from training.data import DATASETS, DatasetUnavailable
from training.models import MODEL_NAMES, RESNET_STEMS
from training.recipes import DEFAULTS, RECIPES, adapt_to_cpu, cpu_flags, describe, resolve

SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "sgd")  # training.train.OPTIMIZERS, without importing TF
PRECISIONS = ("float32", "mixed_bfloat16")  # training.train.PRECISIONS, without importing TF

DEMO_EPOCHS = 8
MIN_PARITY_IMAGES_TEXT = "1,000"  # training.export.MIN_PARITY_IMAGES, without importing TF


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repository", default="model_repository", help="model repository root")
    parser.add_argument("--version", type=int, help="version number (default: next free)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument(
        "--serving-base-path",
        default="/models",
        help="where TF Serving sees the repository, written into models.config (default /models)",
    )
    parser.add_argument("--no-fp16", action="store_true", help="skip the model.fp16.onnx export")
    parser.add_argument(
        "--int8", action="store_true",
        help="also model.int8.onnx (static, calibrated on 256 training images picked with --seed, "
        "gated on the whole test set: dropped, the reason recorded, when more than 0.5 points "
        "below fp32); needs a dataset's labelled test set (python -m training quantize otherwise)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Train CNN classifiers and export them to a model repository "
        "(SavedModel for TF Serving, ONNX fp32/fp16 for the gateway, behind a parity gate).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser(
        "train", help="train, evaluate and export a model",
        description="Train a model, evaluate it on the test set, export it to the repository.",
    )  # fmt: skip
    train.add_argument(
        "--model", choices=[m for m in MODEL_NAMES if m != "resnet50_imagenet"], default="lenet"
    )
    train.add_argument("--dataset", choices=DATASETS, default="mnist")
    train.add_argument(
        "--recipe", choices=tuple(RECIPES),
        help="a measured combination of the settings below (flags given explicitly win); "
        "`best`: LeNet on MNIST or Fashion-MNIST, ResNet50 on Fashion-MNIST; `demo`: LeNet on MNIST in make demo's 8 epochs",
    )  # fmt: skip
    train.add_argument("--epochs", type=int, help=f"default {DEFAULTS['epochs']}")
    train.add_argument("--batch-size", type=int, help=f"default {DEFAULTS['batch_size']}")
    train.add_argument("--learning-rate", type=float, help=f"default {DEFAULTS['learning_rate']}")
    train.add_argument(
        "--optimizer", choices=OPTIMIZERS,
        help="adam (default; AdamW with --weight-decay) or sgd (Nesterov momentum, "
        "--momentum); SGD wants a rate near 0.1 where Adam wants 1e-3",
    )  # fmt: skip
    train.add_argument(
        "--momentum", type=float, help="sgd's momentum in [0, 1) (default 0.9; 0: plain SGD)"
    )
    train.add_argument(
        "--weight-decay", type=float,
        help="decoupled weight decay, each step shrinks a weight by rate x decay (biases and "
        "normalisation excluded; with adam: AdamW); default 0",
    )  # fmt: skip
    train.add_argument(
        "--label-smoothing", type=float,
        help="smooth the training targets towards uniform by this much, in [0, 1) (e.g. 0.1); "
        "default 0",
    )  # fmt: skip
    train.add_argument(
        "--schedule", choices=SCHEDULES,
        help="learning rate over the run: constant (default), cosine decay to 0 after "
        "--warmup-epochs of linear warm-up, or plateau (halve when val_loss stalls for 2 epochs)",
    )  # fmt: skip
    train.add_argument(
        "--warmup-epochs", type=int, help="cosine: linear warm-up epochs (default 0)"
    )
    train.add_argument(
        "--augment", nargs="?", const="graph", choices=AUGMENT_KINDS,
        help="augment training batches: graph (TensorFlow ops inside the tf.data graph; the "
        "default when --augment is given alone), albumentations (Python, one call per batch), "
        "flip_shift (Fashion-MNIST only: left-right mirror and a shift of up to 3 px, graph ops) "
        "or none (default)",
    )  # fmt: skip
    train.add_argument("--limit", type=int, help="at most N training images (stratified subset)")
    train.add_argument(
        "--test-limit", type=int,
        help="at most N test images (default: all; with --limit, max(1000, limit))",
    )  # fmt: skip
    train.add_argument("--kfold", type=int, help="K-fold cross-validation; reports mean and std")
    train.add_argument("--pipeline", choices=("tfdata", "pydataset"), default="tfdata")
    train.add_argument("--validation-fraction", type=float, default=0.1)
    train.add_argument("--patience", type=int, help="early-stopping patience (epochs, default 3)")
    train.add_argument(
        "--data-dir", help="directory with the standard dataset files (or set CONVNET_DATA_DIR)"
    )
    train.add_argument(
        "--weights", choices=("imagenet",), help="resnet50: ImageNet weights on disk"
    )
    train.add_argument(
        "--resnet-side", type=int,
        help="resnet50: the side the 28x28 images are resized to inside the model (default 32); "
        "compute grows with its square",
    )  # fmt: skip
    train.add_argument(
        "--resnet-stem", choices=RESNET_STEMS,
        help="resnet50's first layers: imagenet (default; 7x7 stride-2 conv and max-pool) or "
        "cifar (3x3 stride-1 conv, no pool: about 16x the compute at the same side)",
    )  # fmt: skip
    train.add_argument(
        "--fused-batch-norm", action="store_true",
        help="resnet50: train batch normalisation with TensorFlow's fused kernel (0.85x the CPU "
        "per epoch, but under mixed_bfloat16 it learned worse: off by default)",
    )  # fmt: skip
    train.add_argument(
        "--precision", choices=PRECISIONS,
        help="Keras dtype policy while training: float32 (default) or mixed_bfloat16 (bfloat16 "
        "compute, float32 variables); the exported model is float32 either way",
    )  # fmt: skip
    train.add_argument(
        "--jit-compile", action=argparse.BooleanOptionalAction,
        help="compile the train and predict steps with XLA (default off)",
    )  # fmt: skip
    train.add_argument(
        "--time-budget", type=float, metavar="MINUTES",
        help="keep training within MINUTES of wall time: stop after an epoch when the median "
        "epoch would not fit, or mid-epoch when the time is spent; evaluation and export follow. "
        "A cosine decay then ends with the budget if the epochs do not fit in it",
    )  # fmt: skip
    train.add_argument(
        "--runs-dir", default="runs", help="where run directories go (default runs/)"
    )
    train.add_argument("--no-export", action="store_true", help="train and evaluate only")
    _add_common(train)

    export = commands.add_parser(
        "export", help="export a model without training (one of this package's, or your own)",
        description="Export a checkpoint (--model M --checkpoint), an untrained ImageNet-shaped "
        "ResNet50 for throughput measurements (--model resnet50_imagenet), or a model you bring "
        "(--from PATH: a .keras file, a SavedModel directory or an ONNX file, with --name and "
        "--class-names; its input size and channels come from the model, the preprocessing from "
        "--scale, --mean/--std and --layout, and goes inside the exported graph).",
    )  # fmt: skip
    export.add_argument("--model", choices=MODEL_NAMES, help="one of this package's models")
    export.add_argument("--checkpoint", help="a .keras file saved by training (checkpoints/)")
    own = export.add_argument_group("a model you bring (--from)")
    own.add_argument(
        "--from", dest="source", metavar="PATH",
        help="a .keras file, a SavedModel directory or an .onnx file (float or uint8 image input)",
    )  # fmt: skip
    own.add_argument("--name", help="the model's name in the repository")
    own.add_argument(
        "--class-names", metavar="A,B,C|FILE",
        help="the class names in output order: a comma-separated list or a file, one a line",
    )  # fmt: skip
    own.add_argument(
        "--scale", type=float,
        help="multiply the uint8 pixels by this first (0.00392156862745098 for 0-1 inputs)",
    )  # fmt: skip
    own.add_argument("--mean", metavar="M1,M2,M3", help="then subtract this per channel")
    own.add_argument("--std", metavar="S1,S2,S3", help="then divide by this per channel")
    own.add_argument(
        "--layout", choices=("nhwc", "nchw"),
        help="the model's input layout (default: told from its shape; NCHW gets a transpose)",
    )  # fmt: skip
    own.add_argument(
        "--softmax", action="store_true",
        help="the model answers logits: append a softmax (the output must be probabilities)",
    )  # fmt: skip
    own.add_argument(
        "--images", metavar="DIR",
        help="PNG/JPEG images (any folders below) for the parity gate, resized to the input; "
        f"topped up with generated pixels to {MIN_PARITY_IMAGES_TEXT} (default: generated only)",
    )  # fmt: skip
    own.add_argument(
        "--keep-float-input", action="store_true",
        help="(ONNX) keep the model's own float input; the preprocessing is declared in "
        "metadata.json and applied by the gateway's image endpoint and the client",
    )  # fmt: skip
    export.add_argument(
        "--dataset", choices=DATASETS, default="mnist", help="class names, parity images"
    )
    export.add_argument("--data-dir")
    _add_common(export)

    demo = commands.add_parser(
        "demo", help="train LeNet on MNIST with the default budget and export it",
        description="The first part of `make demo`: get the data, train LeNet on MNIST with "
        "--recipe demo (cosine decay over 8 epochs), export.",
    )  # fmt: skip
    demo.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    demo.add_argument("--repository", default="model_repository")

    compare = commands.add_parser(
        "compare", help="MLP vs LeNet on MNIST and Fashion-MNIST: one budget, one Markdown table",
        description="Table the newest run of each (model, dataset) pair in --runs-dir (test "
        "accuracy, macro F1, errors, seconds per epoch, parameters, per-class F1); with --train, "
        "first train every pair with make demo's budget (8 epochs, cosine decay from 3e-3 after "
        "1 warm-up epoch, seed 42), without export.",
    )  # fmt: skip
    compare.add_argument("--runs-dir", default="runs", help="run directories (default runs/)")
    compare.add_argument("--train", action="store_true", help="train the pairs first")
    compare.add_argument("--out", help="also write the Markdown here (e.g. runs/compare.md)")
    compare.add_argument(
        "--models", type=_names, default=list(COMPARE_MODELS), help="default mlp,lenet"
    )
    compare.add_argument(
        "--datasets", type=_names, default=list(COMPARE_DATASETS),
        help="default mnist,fashion_mnist",
    )  # fmt: skip
    compare.add_argument("--epochs", type=int, help="--train: override the budget's 8 epochs")
    compare.add_argument("--limit", type=int, help="--train: at most N training images (quick)")
    compare.add_argument("--data-dir", help="--train: directory with the dataset files")

    quantize = commands.add_parser(
        "quantize", help="add an int8 ONNX file, behind an accuracy gate, as the next version",
        description="Static int8 quantization (ONNX Runtime, QDQ: int8 weights per channel, "
        "uint8 activations; Conv, MatMul, Gemm) of a published version's model.onnx, calibrated on "
        "training images of its dataset, gated on its whole test set (int8 accuracy at most "
        "--max-drop points below fp32), published as the next version with model.int8.onnx "
        "beside the source's files. Serve it with python -m serving --precision int8.",
    )  # fmt: skip
    quantize.add_argument("--repository", default="model_repository")
    quantize.add_argument("--model", required=True, help="a model in the repository, e.g. lenet")
    quantize.add_argument("--version", type=int, help="the version to quantize (default: newest)")
    quantize.add_argument("--calibration-images", type=int, default=256, help="default 256")
    quantize.add_argument("--seed", type=int, default=0, help="picks the calibration images")
    quantize.add_argument(
        "--max-drop", type=float, default=0.5, help="allowed accuracy drop in points (0.5)"
    )
    quantize.add_argument(
        "--allow-ungated", action="store_true",
        help="a model with no dataset (resnet50_imagenet): calibrate on random pixels and "
        "publish without an accuracy gate, for speed checks only",
    )  # fmt: skip
    quantize.add_argument(
        "--images",
        help="labelled images, DIR/<class name>/<image> (at least 200), to calibrate on and gate "
        "with instead of the model's dataset: for a model you brought",
    )
    quantize.add_argument("--serving-base-path", default="/models")
    return parser


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "export":
            return _export(args)
        if args.command == "compare":
            return _compare(args)
        if args.command == "quantize":
            return _quantize(args)
        if args.command == "demo":
            from training.train import TrainConfig, run_training

            settings, sources = resolve("demo", "lenet", "mnist", {"epochs": args.epochs})
            print(describe("demo", settings, sources), flush=True)
            config = TrainConfig(repository=args.repository, recipe="demo", **settings)
            run_training(config)
            return 0
    except DatasetUnavailable as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except Exception as error:
        from training.export import ExportError, ParityError

        if isinstance(error, (ParityError, ExportError)):
            print(f"error: {error}", file=sys.stderr)
            return 4
        raise
    return 2


def train_config(args: argparse.Namespace) -> tuple[Any, str]:
    """The TrainConfig for `train`'s arguments (flags > recipe > defaults) and a line saying so."""
    from training.train import TrainConfig

    explicit = {key: getattr(args, key) for key in DEFAULTS}
    settings, sources = resolve(args.recipe, args.model, args.dataset, explicit)
    cpu_note = adapt_to_cpu(settings, sources, cpu_flags())
    config = TrainConfig(
        model=args.model, dataset=args.dataset, repository=args.repository, runs_dir=args.runs_dir,
        version=args.version, limit=args.limit, test_limit=args.test_limit, kfold=args.kfold,
        seed=args.seed, pipeline=args.pipeline, validation_fraction=args.validation_fraction,
        data_dir=args.data_dir, weights=args.weights, time_budget_minutes=args.time_budget,
        export=not args.no_export, fp16=not args.no_fp16, int8=args.int8,
        serving_base_path=args.serving_base_path,
        fused_batch_norm=args.fused_batch_norm,
        recipe=args.recipe, **settings,
    )  # fmt: skip
    line = describe(args.recipe, settings, sources)
    return config, line if cpu_note is None else f"{line}\n{cpu_note}"


def _train(args: argparse.Namespace) -> int:
    from training.train import run_training

    try:
        config, line = train_config(args)
    except ValueError as error:  # UnknownRecipe, or settings that do not go together
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(line, flush=True)
    run_training(config)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from training.compare import MissingRun, compare

    overrides = {key: getattr(args, key) for key in ("epochs", "limit", "data_dir")}
    try:
        text = compare(
            Path(args.runs_dir), train=args.train, out=Path(args.out) if args.out else None,
            models=tuple(args.models), datasets=tuple(args.datasets),
            **{key: value for key, value in overrides.items() if value is not None},
        )  # fmt: skip
    except MissingRun as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(text, end="", flush=True)
    return 0


def _export(args: argparse.Namespace) -> int:
    own_options = ("name", "class_names", "scale", "mean", "std", "layout", "images")
    if args.source is not None:
        if args.model is not None or args.checkpoint is not None:
            print("error: --from exports your model; --model/--checkpoint one of ours, not both",
                  file=sys.stderr)  # fmt: skip
            return 2
        missing = [
            f"--{o.replace('_', '-')}" for o in ("name", "class_names") if not getattr(args, o)
        ]
        if missing:
            print(f"error: --from needs {' and '.join(missing)}", file=sys.stderr)
            return 2
        return _export_own(args)
    given = [f"--{o.replace('_', '-')}" for o in own_options if getattr(args, o) is not None]
    if args.softmax:
        given.append("--softmax")
    if args.keep_float_input:
        given.append("--keep-float-input")
    if args.model is None or given:
        print("error: export needs --model (one of ours) or --from PATH (yours); "
              + (f"{', '.join(given)} go with --from" if given else "neither was given"),
              file=sys.stderr)  # fmt: skip
        return 2
    return _export_ours(args)


def _export_own(args: argparse.Namespace) -> int:
    from training.own_model import ModelRefused, OwnModelOptions, export_own_model

    if args.int8:
        print("error: --int8 needs a labelled test set to gate on, which a model you bring does "
              "not name; export it, then run python -m training quantize --images DIR (labelled "
              "images, DIR/<class name>/<image>)", file=sys.stderr)  # fmt: skip
        return 2

    options = OwnModelOptions(
        source=Path(args.source), name=args.name, class_names=args.class_names,
        repository=Path(args.repository), scale=args.scale, mean=args.mean, std=args.std,
        layout=args.layout, softmax=args.softmax,
        images=Path(args.images) if args.images else None, version=args.version, seed=args.seed,
        fp16=not args.no_fp16, serving_base_path=args.serving_base_path,
        keep_float_input=args.keep_float_input,
    )  # fmt: skip
    try:
        version_dir, metadata = export_own_model(options)
    except ModelRefused as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parity = metadata["parity"]
    checked = ", ".join(
        f"{part} max|diff| {parity[part]['max_abs_diff']:.2g}"
        + (" (dropped)" if "dropped" in parity[part] else "")
        for part in ("saved_model", "fp32", "fp16")
        if part in parity
    )
    print(f"published {version_dir} ({', '.join(metadata['files'])}); parity against "
          f"{parity['reference']} on {parity['fp32']['images']} images: {checked}")  # fmt: skip
    return 0


def _export_ours(args: argparse.Namespace) -> int:
    import keras
    import numpy as np

    from training.export import MIN_PARITY_IMAGES, ExportRequest, export_model
    from training.models import (
        IMAGENET_CLASSES,
        build_model,
        float32_copy,
        imagenet_weights_path,
    )

    note = None
    int8 = None
    if args.model == "resnet50_imagenet":
        pretrained = imagenet_weights_path(include_top=True) is not None
        model = build_model("resnet50_imagenet", weights="imagenet" if pretrained else None)
        note = (
            "ImageNet weights found on disk; class names are indices"
            if pretrained
            else "untrained: for throughput measurements"
        )
        class_names = [f"class_{i}" for i in range(IMAGENET_CLASSES)]
        dataset_name = None
        if args.int8:
            print("error: --int8 needs a labelled test set to gate on and resnet50_imagenet has "
                  "none: export it, then run python -m training quantize --allow-ungated",
                  file=sys.stderr)  # fmt: skip
            return 2
        rng = np.random.default_rng(args.seed)
        parity_images = rng.integers(0, 256, (MIN_PARITY_IMAGES, 224, 224, 3), dtype=np.uint8)
        fingerprint = None
    else:
        if not args.checkpoint:
            print("error: --checkpoint is required for a trained model", file=sys.stderr)
            return 2
        # Registers the layers, losses and schedules a checkpoint may name.
        import training.layers
        import training.losses
        import training.schedules  # noqa: F401
        from training.data import load_dataset

        try:
            loaded = keras.models.load_model(args.checkpoint)
        except Exception as error:
            first = (str(error).strip() or type(error).__name__).splitlines()[0][:300]
            print(f"error: cannot load {args.checkpoint} as a Keras model: {first}",
                  file=sys.stderr)  # fmt: skip
            return 2
        dataset = load_dataset(args.dataset, args.data_dir)
        expected = (None, *dataset.x_test.shape[1:])
        found = [(tuple(i.shape), str(i.dtype)) for i in loaded.inputs]
        if found != [(expected, "uint8")]:
            shown = ", ".join(f"{dtype} {list(shape)}" for shape, dtype in found)
            print(f"error: {args.checkpoint} is not a {args.model} checkpoint for {args.dataset} "
                  f"(its input is {shown}; ours take uint8 {list(expected)}): export a model of "
                  "your own with --from PATH --name NAME --class-names ...", file=sys.stderr)  # fmt: skip
            return 2
        # A mixed_bfloat16 run's checkpoint computes in bfloat16; the repository gets float32.
        model = float32_copy(loaded)
        class_names, dataset_name = dataset.class_names, dataset.name
        parity_images = dataset.x_test[: max(MIN_PARITY_IMAGES, 2000)]
        fingerprint = dataset.fingerprint()
        if args.int8:
            from training.quantize import int8_request

            int8 = int8_request(dataset, args.seed)
    request = ExportRequest(
        model_name=args.model, dataset=dataset_name, class_names=class_names,
        parity_images=parity_images, seed=args.seed, dataset_fingerprint=fingerprint,
        note=note, fp16=not args.no_fp16, int8=int8,
    )  # fmt: skip
    version_dir, metadata = export_model(
        model, request, Path(args.repository), args.version, args.serving_base_path
    )
    from training.train import _print_export

    _print_export(version_dir, metadata)
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from training.quantize import QuantizationError, quantize_version

    try:
        target, metadata = quantize_version(
            Path(args.repository), args.model, args.version, args.calibration_images, args.seed,
            args.max_drop, args.allow_ungated, serving_base_path=args.serving_base_path,
            images_dir=Path(args.images) if args.images else None,
        )  # fmt: skip
    except QuantizationError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    int8 = metadata["int8"]
    gate = int8["gate"]
    judged = (
        f"accuracy fp32 {gate['accuracy_fp32'] * 100:.2f}%, int8 {gate['accuracy_int8'] * 100:.2f}%"
        if "accuracy_int8" in gate
        else "no test set: not gated (--allow-ungated)"
    )
    print(
        f"published {target}: model.int8.onnx from version {int8['derived_from_version']}, "
        f"calibrated on {int8['calibration']}; {judged}; answers agree on "
        f"{gate['argmax_agreement'] * 100:.2f}% of {gate['images']:,} images; quantized "
        + ", ".join(f"{count} {op}" for op, count in int8["quantized_ops"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
