"""``python -m clients``: classify images, read model status and metadata, from the shell.

Public API: ``main(argv=None) -> int`` (the exit code) and ``EXIT_CODES`` (what each code means).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from clients.errors import EXCEPTION_FOR_STATUS, ServingError

EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error
EXIT_USAGE = 2  # argparse's own code: bad arguments or an unreadable file
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "unexpected error",
    EXIT_USAGE: "bad arguments or unreadable input file",
    **{
        cls.exit_code: f"{cls.__name__} ({', '.join(s.name for s in cls.statuses)})"
        for cls in sorted(set(EXCEPTION_FOR_STATUS.values()), key=lambda c: c.exit_code)
    },
}


def _epilog() -> str:
    lines = ["exit codes:"]
    lines += [f"  {code:>2}  {meaning}" for code, meaning in sorted(EXIT_CODES.items())]
    lines += [
        "",
        "examples:",
        "  python -m clients predict --target http://127.0.0.1:8501 --model lenet digit.png",
        "  python -m clients predict --target grpc://127.0.0.1:8500 --model lenet --json a.png b.png",
        "  python -m clients predict --target http://127.0.0.1:8000 --protocol v2 --model lenet x.npy",
        "  python -m clients status --target http://127.0.0.1:8501 --model lenet",
        "  python -m clients metadata --target grpc://127.0.0.1:8500 --model lenet --json",
    ]
    return "\n".join(lines)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        required=True,
        help="server address: http://host:port, https://..., grpc://host:port or grpcs://...",
    )
    parser.add_argument("--model", required=True, help="model name, e.g. lenet")
    version = parser.add_mutually_exclusive_group()
    version.add_argument("--version", type=int, help="model version (default: latest)")
    version.add_argument("--label", help="model version label, e.g. stable (TF Serving)")
    parser.add_argument(
        "--protocol",
        choices=["rest", "v2", "grpc", "v2-grpc"],
        help="rest (TF Serving REST, default for http), v2 (KServe V2 binary), grpc (TF Serving "
        "gRPC) or v2-grpc (KServe V2 over gRPC); the last two with grpc:// only",
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")
    parser.add_argument("--retries", type=int, default=3, help="attempts on 503/429 (3)")
    parser.add_argument("--api-key", help="API key, sent as the x-api-key header or gRPC metadata")
    parser.add_argument("--bearer-token", help="token sent as 'authorization: Bearer ...'")
    parser.add_argument("--ca-cert", type=Path, help="PEM CA bundle to verify https/grpcs servers")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three commands."""
    parser = argparse.ArgumentParser(
        prog="python -m clients",
        description="Call TF Serving or the convnet-serving gateway over HTTP (REST, KServe V2) "
        "or gRPC, without TensorFlow.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    predict = commands.add_parser(
        "predict",
        help="classify images and print the top-k labels per image",
        description="Classify images (PNG/JPEG/... paths, or .npy arrays of pixels) with the "
        "model's own input size and class names, and print the top-k labels per image.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(predict)
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files or .npy arrays")
    predict.add_argument("--top-k", type=int, default=5, help="labels per image (5)")
    predict.add_argument(
        "--class-names", type=Path, help="text file, one class name per line (overrides metadata)"
    )
    status = commands.add_parser(
        "status",
        help="print each model version's state (AVAILABLE, LOADING, ...)",
        description="Print each version's state, as TF Serving's GetModelStatus reports it.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(status)
    metadata = commands.add_parser(
        "metadata",
        help="print the model's signatures (input/output names, dtypes, shapes)",
        description="Print the model's signatures: input and output names, dtypes and shapes.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_common(metadata)
    return parser


def _load_images(paths: list[str]) -> list[Any]:
    loaded: list[Any] = []
    for name in paths:
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"no such image file: {name}")
        if path.suffix == ".npy":
            import numpy as np

            loaded.append(np.load(path, allow_pickle=False))
        else:
            loaded.append(path.read_bytes())
    return loaded


def _run(args: argparse.Namespace) -> Any:
    from clients.client import Client, RetryPolicy

    with Client(
        args.target,
        protocol=args.protocol,
        timeout=args.timeout,
        retry=RetryPolicy(attempts=max(1, args.retries)),
        api_key=args.api_key,
        bearer_token=args.bearer_token,
        ca_cert=args.ca_cert,
    ) as client:
        if args.command == "predict":
            images = _load_images(args.images)
            class_names = None
            if args.class_names is not None:
                class_names = args.class_names.read_text().split("\n")
                class_names = [name for name in class_names if name]
            results = client.classify(
                args.model,
                images,
                top_k=args.top_k,
                version=args.version,
                label=args.label,
                class_names=class_names,
            )
            return [
                {"image": path, "top_k": [{"label": lbl, "score": score} for lbl, score in top]}
                for path, top in zip(args.images, results, strict=True)
            ]
        if args.command == "status":
            states = client.status(args.model, version=args.version, label=args.label)
            return [
                {
                    "version": s.version,
                    "state": s.state,
                    "status": s.status.name,
                    "message": s.message,
                }
                for s in states
            ]
        metadata = client.metadata(args.model, version=args.version, label=args.label)
        return asdict(metadata)


def _print_human(command: str, result: Any) -> None:
    if command == "predict":
        for entry in result:
            best = ", ".join(f"{t['label']} {t['score']:.4f}" for t in entry["top_k"])
            print(f"{entry['image']}: {best}")
    elif command == "status":
        for state in result:
            suffix = f" ({state['status']}: {state['message']})" if state["message"] else ""
            print(f"version {state['version']}: {state['state']}{suffix}")
    else:
        print(f"model {result['name']} version {result['version']}")
        for sig_name, sig in result["signatures"].items():
            print(f"signature {sig_name}:")
            for kind in ("inputs", "outputs"):
                for spec in sig[kind].values():
                    print(f"  {kind[:-1]:<6} {spec['name']}: {spec['dtype']} {list(spec['shape'])}")
        if result.get("class_names"):
            print(f"classes: {', '.join(result['class_names'])}")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see ``EXIT_CODES``)."""
    args = build_parser().parse_args(argv)
    try:
        result = _run(args)
    except ServingError as error:
        message = {"error": error.message, "status": error.status.name}
        print(json.dumps(message) if args.json else f"error: {error}", file=sys.stderr)
        return error.exit_code
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        _print_human(args.command, result)
    return EXIT_OK
