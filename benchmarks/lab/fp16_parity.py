"""Where an fp16 export loses its parity: the whole graph in float16, then with one kind of op
kept in float32 at a time, each against the SavedModel on a dataset's test images.

The export's gate (``training.export.run_parity_gate``) drops ``model.fp16.onnx`` when its
probabilities differ from the SavedModel's by more than ``FP16_TOLERANCE``; this says which ops
the difference comes from, and what float16 does to the answers and the accuracy. Variants are
converted from the version's ``model.onnx`` the way the export converts it (ONNX Runtime's
``convert_float_to_float16``, inputs and outputs kept), and run on ONNX Runtime's CPU provider.

    python -m benchmarks.lab.fp16_parity --version-dir model_repository/lenet/1 --dataset fashion_mnist
        [--limit 10000] [--keep-fp32 Conv MatMul] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training import export
from training.data import DATASETS, load_dataset

#: op types tried one at a time by default, where the model has them (the heavy ones and the
#: output's softmax)
DEFAULT_KEPT = ("Conv", "MatMul", "Gemm", "Softmax")


def fp16_variant(source: Path, output: Path, keep_fp32: tuple[str, ...]) -> None:
    """``source`` in float16 except the op types in ``keep_fp32``, inputs and outputs kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(
        onnx.load(str(source)), keep_io_types=True, op_block_list=list(keep_fp32)
    )
    onnx.save(half, str(output))


def op_types(model_path: Path) -> set[str]:
    import onnx

    return {node.op_type for node in onnx.load(str(model_path)).graph.node}


def compare(
    version_dir: Path, images: np.ndarray, labels: np.ndarray, variants: list[tuple[str, ...]]
) -> list[dict[str, Any]]:
    """One row per variant (the fp32 file first), each against the SavedModel."""
    reference = export.saved_model_predict(version_dir, images)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        runs: list[tuple[str, Path]] = [("fp32 (model.onnx)", version_dir / "model.onnx")]
        for kept in variants:
            path = Path(tmp) / f"fp16-{'-'.join(kept) or 'all'}.onnx"
            fp16_variant(version_dir / "model.onnx", path, kept)
            name = "fp16, whole graph" if not kept else f"fp16, {' '.join(kept)} in fp32"
            runs.append((name, path))
        for name, path in runs:
            probabilities = export.onnx_predict(path, images)
            verdict = export.compare_predictions(
                reference, probabilities, export.FP16_TOLERANCE, export.FP16_MIN_AGREEMENT
            )
            rows.append(
                {
                    "variant": name,
                    "max_abs_diff": verdict["max_abs_diff"],
                    "mean_abs_diff": verdict["mean_abs_diff"],
                    "answers_changed": verdict["argmax_disagreements"],
                    "accuracy": float(np.mean(probabilities.argmax(axis=1) == labels)),
                    "fp16_gate": "pass" if verdict["passed"] else "fail",
                }
            )
    return rows


def table(rows: list[dict[str, Any]], images: int) -> str:
    lines = [
        f"| variant | max \\|diff\\| | mean \\|diff\\| | answers changed (of {images:,}) | "
        f"accuracy | within the fp16 gate ({export.FP16_TOLERANCE:g}) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['variant']} | {row['max_abs_diff']:.2e} | {row['mean_abs_diff']:.1e} | "
            f"{row['answers_changed']} | {row['accuracy'] * 100:.2f}% | {row['fp16_gate']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version-dir", type=Path, required=True, help="a published version")
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    parser.add_argument("--limit", type=int, help="the first N test images (default: all)")
    parser.add_argument(
        "--keep-fp32",
        nargs="*",
        help=f"op types to try in fp32 (default: {' '.join(DEFAULT_KEPT)})",
    )
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()
    model = args.version_dir / "model.onnx"
    if not model.is_file() or not (args.version_dir / "saved_model.pb").is_file():
        parser.error(f"{args.version_dir} has no model.onnx and saved_model.pb")
    present = op_types(model)
    kept = args.keep_fp32 if args.keep_fp32 is not None else DEFAULT_KEPT
    variants: list[tuple[str, ...]] = [()] + [(op,) for op in kept if op in present]
    dataset = load_dataset(args.dataset)
    images, labels = dataset.x_test[: args.limit], dataset.y_test[: args.limit]
    print(f"{args.version_dir}: {len(images):,} test images of {args.dataset}", flush=True)
    rows = compare(args.version_dir, images, labels, variants)
    print(table(rows, len(images)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
