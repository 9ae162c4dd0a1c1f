"""``python -m benchmarks run | sweep | rate | ceiling | accuracy``.

Exit status: 0 when every check passed, 1 when a run failed (an accuracy drop, errors above the
allowed ratio, no answers, an offline reference that is not the served model), 2 for usage
errors, 3 (``rate``) when the answers were right but the generator could not keep up at some
load point (those points are marked invalid and their numbers left out).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_REPOSITORY = os.environ.get("MODEL_REPOSITORY", "model_repository")


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _words(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME", "lenet"))
    parser.add_argument(
        "--repository",
        default=DEFAULT_REPOSITORY,
        help="model repository on disk: metadata.json (labels) and model.onnx (offline answers,"
        " ceiling) [env MODEL_REPOSITORY]",
    )
    parser.add_argument("--dataset", default="mnist", help="test set the images come from")


def _data(parser: argparse.ArgumentParser) -> None:
    """Where the images come from besides --dataset: any model's own data, or none."""
    parser.add_argument(
        "--images", metavar="DIR",
        help="images in one folder per class (DIR/<class>/<image>, PNG or JPEG), resized to the "
        "model's input; accuracy against the folder names (instead of --dataset)",
    )  # fmt: skip
    parser.add_argument(
        "--synthetic", action="store_true",
        help="random pixels of the model's declared input (metadata.json or model.onnx in "
        "--repository); answers checked against offline ONNX Runtime, no accuracy",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    from benchmarks.lab import index

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Load tests that measure latency, throughput and the accuracy of served answers.",
        epilog="More tools, without this command line: python -m benchmarks.demo (make demo).\n\n"
        + index(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="one Locust run against one target")
    run.add_argument("--target", required=True, help="http://host:port, or host:port for grpc")
    run.add_argument(
        "--protocol", choices=("rest", "v2", "grpc", "v2-grpc", "image"), default="rest"
    )
    _common(run)
    _data(run)
    run.add_argument("--version", type=int)
    run.add_argument("--label", help="version label (TF Serving REST and gRPC)")
    run.add_argument("--users", type=int, default=8)
    run.add_argument("--spawn-rate", type=float, help="users started per second (default: all)")
    run.add_argument("--duration", default="30s", help="measured time after warm-up (30s, 2m)")
    run.add_argument("--warmup", default="3s", help="excluded from latency and throughput")
    run.add_argument("--processes", type=int, default=1, help="Locust processes (--processes)")
    run.add_argument("--images-per-request", type=int, default=1)
    run.add_argument(
        "--payload-format",
        help="rest: row|columnar, v2: binary|json, grpc: tensor_content, image: png",
    )
    run.add_argument("--num-images", type=int, default=1024, help="test images cycled through")
    run.add_argument(
        "--image-path",
        default="/v1/models/{model}{suffix}:classify_image?top_k=1",
        help="image endpoint path template ({model}, {suffix})",
    )
    run.add_argument("--max-accuracy-drop", type=float, default=0.01)
    run.add_argument("--min-agreement", type=float, default=0.99)
    run.add_argument("--max-error-ratio", type=float, default=0.01)
    run.add_argument(
        "--ceiling-seconds",
        type=float,
        default=1.0,
        help="in-process ONNX Runtime measurement before the run (0: skip)",
    )
    run.add_argument(
        "--ceiling-threads",
        type=int,
        default=1,
        help="intra-op threads of the ceiling (the gateway's default is 1)",
    )
    run.add_argument("--name", help="server name in the report (default: the target)")
    run.add_argument("--out", default="reports/run")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="2 users, 2 s after 1 s warm-up: checks the whole path quickly",
    )

    sweep = commands.add_parser("sweep", help="scenarios and one comparison report")
    sweep.add_argument(
        "--target",
        action="append",
        default=[],
        help="[NAME=]http://host:port[,grpchost:port]; repeat for several servers",
    )
    _common(sweep)
    _data(sweep)
    sweep.add_argument("--users", type=_ints, default=[1, 4, 16, 32], help="e.g. 1,2,4,8,16,32")
    sweep.add_argument("--images-per-request", type=_ints, default=[1], help="e.g. 1,8,32")
    sweep.add_argument("--protocols", type=_words, default=["rest", "v2", "grpc"])
    sweep.add_argument("--duration", default="10s")
    sweep.add_argument("--warmup", default="2s")
    sweep.add_argument("--processes", type=int, default=1)
    sweep.add_argument("--num-images", type=int, default=1024)
    sweep.add_argument(
        "--start-gateway",
        action="store_true",
        help="start the gateway from --repository with batching on and off",
    )
    sweep.add_argument(
        "--batching",
        type=_words,
        default=["on", "off"],
        help="with --start-gateway: on,off | on | off",
    )
    sweep.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        help="extra option for the started gateway, e.g. --gateway-arg=--max-batch-size=64",
    )
    sweep.add_argument(
        "--skip-down",
        action="store_true",
        help="drop targets that are not up; start the gateway only if none is",
    )
    sweep.add_argument("--ceiling-seconds", type=float, default=2.0)
    sweep.add_argument(
        "--ceiling-threads",
        type=int,
        default=1,
        help="intra-op threads of the ceiling (the gateway's default is 1)",
    )
    sweep.add_argument("--max-error-ratio", type=float, default=0.01)
    sweep.add_argument("--out", default="reports/sweep")
    sweep.add_argument(
        "--dry-run", action="store_true", help="one short scenario per server and protocol"
    )

    rate = commands.add_parser(
        "rate",
        help="open-loop load: latency against offered rate, the highest rate under a p99 bound",
    )
    rate.add_argument(
        "--target",
        action="append",
        required=True,
        help="[NAME=]http://host:port[,grpchost:port]; repeat for several servers",
    )
    rate.add_argument("--protocol", type=_words, default=["rest"], help="rest,v2,grpc,v2-grpc")
    _common(rate)
    _data(rate)
    rate.add_argument("--version", type=int)
    rate.add_argument("--label", help="version label (TF Serving REST and gRPC)")
    rate.add_argument(
        "--rates", type=_floats, required=True, help="offered requests/s, e.g. 500,1000,2000"
    )
    rate.add_argument("--arrival", choices=("poisson", "constant"), default="poisson")
    rate.add_argument("--duration", default="20s", help="measured time per load point")
    rate.add_argument("--warmup", default="2s", help="at the same rate, excluded from latency")
    rate.add_argument("--images-per-request", type=int, default=1)
    rate.add_argument("--num-images", type=int, default=1024, help="test images cycled through")
    rate.add_argument("--processes", type=int, default=1, help="generator processes")
    rate.add_argument(
        "--timeout", default="2s", help="an answer later than this after its scheduled time"
        " counts as a timeout",
    )  # fmt: skip
    rate.add_argument(
        "--max-connections", type=int, default=1000, help="HTTP connections, all processes"
    )
    rate.add_argument("--grpc-channels", type=int, default=4, help="HTTP/2 connections per process")
    rate.add_argument(
        "--p99-bound-ms",
        type=float,
        help="search for the highest offered rate whose p99 stays under this, errors under 1%%",
    )
    rate.add_argument("--search-steps", type=int, default=3, help="bisection steps of the search")
    rate.add_argument("--max-error-ratio", type=float, default=0.01)
    rate.add_argument(
        "--max-lag-ms",
        type=float,
        default=5.0,
        help="a load point is invalid when the generator's scheduling lag p99 exceeds this",
    )
    rate.add_argument(
        "--generator-nice",
        type=int,
        default=-10,
        help="niceness of the generator processes where allowed (the servers share the host)",
    )
    rate.add_argument("--cooldown", default="1s", help="pause between load points")
    rate.add_argument("--baseline", help="target NAME the comparison is a ratio to")
    rate.add_argument("--out", default="reports/rate")

    ceiling = commands.add_parser("ceiling", help="in-process ONNX Runtime throughput")
    ceiling.add_argument("--model-path", required=True, help=".../model.onnx")
    ceiling.add_argument("--batch-sizes", type=_ints, default=[1, 8, 64, 256])
    ceiling.add_argument("--seconds", type=float, default=3.0, help="per batch size")
    ceiling.add_argument("--providers", default="auto", help="auto, or a comma list of providers")
    ceiling.add_argument("--intra-op-threads", type=int, default=0)
    ceiling.add_argument("--out", help="write ceiling.json here")

    accuracy = commands.add_parser("accuracy", help="the whole test set through a server")
    accuracy.add_argument("--target", required=True, help="http://host:port or grpc://host:port")
    accuracy.add_argument("--protocol", choices=("rest", "v2", "grpc"))
    _common(accuracy)
    _data(accuracy)
    accuracy.add_argument("--version", type=int)
    accuracy.add_argument("--label")
    accuracy.add_argument("--batch-size", type=int, default=256)
    accuracy.add_argument("--limit", type=int, help="a seeded random N test images only")
    accuracy.add_argument(
        "--allow-difference",
        action="store_true",
        help="do not require served accuracy == offline (fp16, TF Serving)",
    )
    accuracy.add_argument(
        "--precision", choices=("fp32", "fp16", "int8"), default="fp32",
        help="fp16: the offline reference is model.fp16.onnx, which must also stay within "
        "--max-fp16-drop of model.onnx's accuracy (serve it with --precision fp16, and on a CPU "
        "--fp16-on-cpu); int8: the offline reference is model.int8.onnx (serve it with "
        "--precision int8)",
    )  # fmt: skip
    accuracy.add_argument(
        "--max-fp16-drop", type=float, default=0.001,
        help="largest fp16 vs fp32 accuracy difference (default 0.001: 0.1 points)",
    )  # fmt: skip
    accuracy.add_argument("--out", help="write results.json and report.md here")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.command in ("run", "sweep", "rate", "accuracy"):
        from benchmarks.prepare import DataMismatch, data_source

        commands = {"run": _run, "sweep": _sweep, "rate": _rate, "accuracy": _accuracy}
        try:
            args.dataset = data_source(args.dataset, args.images, args.synthetic)
            return commands[args.command](args)
        except DataMismatch as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    return _ceiling(args)


def _run(args: argparse.Namespace) -> int:
    from benchmarks.run import RunConfig, parse_duration, print_summary, run_benchmark

    config = RunConfig(
        target=args.target,
        model=args.model,
        protocol=args.protocol,
        out=args.out,
        users=2 if args.dry_run else args.users,
        spawn_rate=args.spawn_rate or float(args.users),
        duration_s=2.0 if args.dry_run else parse_duration(args.duration),
        warmup_s=1.0 if args.dry_run else parse_duration(args.warmup),
        processes=args.processes,
        images_per_request=args.images_per_request,
        payload_format=args.payload_format,
        version=args.version,
        label=args.label,
        repository=args.repository,
        dataset=args.dataset,
        num_images=args.num_images,
        image_path=args.image_path,
        ceiling_seconds=0.2 if args.dry_run else args.ceiling_seconds,
        ceiling_intra_op_threads=args.ceiling_threads,
        max_accuracy_drop=args.max_accuracy_drop,
        min_agreement=args.min_agreement,
        max_error_ratio=args.max_error_ratio,
        server_name=args.name,
    )
    results = run_benchmark(config)
    print_summary(results)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 1 if results["failure"] else 0


def _sweep(args: argparse.Namespace) -> int:
    from benchmarks.run import parse_duration, print_summary
    from benchmarks.sweep import SweepConfig, quick, run_sweep

    if not args.target and not args.start_gateway:
        print("give --target (repeatable) and/or --start-gateway", file=sys.stderr)
        return 2
    config = SweepConfig(
        model=args.model,
        targets=args.target,
        out=args.out,
        users=args.users,
        images_per_request=args.images_per_request,
        protocols=args.protocols,
        duration_s=parse_duration(args.duration),
        warmup_s=parse_duration(args.warmup),
        processes=args.processes,
        repository=args.repository,
        dataset=args.dataset,
        num_images=args.num_images,
        start_gateway=args.start_gateway,
        batching=[word == "on" for word in args.batching],
        gateway_args=args.gateway_arg,
        skip_down=args.skip_down,
        ceiling_seconds=args.ceiling_seconds,
        ceiling_intra_op_threads=args.ceiling_threads,
        max_error_ratio=args.max_error_ratio,
    )
    if args.dry_run:
        config = quick(config)
    sweep = run_sweep(config)
    if sweep["runs"]:
        print_summary(sweep["runs"])
    for reason in sweep["failure_reasons"] if not sweep["runs"] else []:
        print(f"FAILURE: {reason}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return 1 if sweep["failure"] else 0


def _rate(args: argparse.Namespace) -> int:
    from benchmarks.rate import RateConfig, print_rate_summary, run_rate
    from benchmarks.run import parse_duration

    config = RateConfig(
        targets=args.target,
        model=args.model,
        rates=args.rates,
        protocols=args.protocol,
        out=args.out,
        arrival=args.arrival,
        duration_s=parse_duration(args.duration),
        warmup_s=parse_duration(args.warmup),
        images_per_request=args.images_per_request,
        version=args.version,
        label=args.label,
        repository=args.repository,
        dataset=args.dataset,
        num_images=args.num_images,
        processes=args.processes,
        timeout_s=parse_duration(args.timeout),
        max_connections=args.max_connections,
        grpc_channels=args.grpc_channels,
        p99_bound_ms=args.p99_bound_ms,
        search_steps=args.search_steps,
        max_error_ratio=args.max_error_ratio,
        max_lag_ms=args.max_lag_ms,
        generator_nice=args.generator_nice,
        cooldown_s=parse_duration(args.cooldown),
        baseline=args.baseline,
    )
    results = run_rate(config)
    print_rate_summary(results)
    print(f"report: {Path(args.out) / 'report.md'}")
    if results["failure"]:
        return 1
    return 3 if results["invalid_points"] else 0


def _ceiling(args: argparse.Namespace) -> int:
    from benchmarks.ceiling import format_ceiling, measure_ceiling

    result = measure_ceiling(
        args.model_path, args.batch_sizes, args.seconds, args.providers, args.intra_op_threads
    )
    print(format_ceiling(result))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _accuracy(args: argparse.Namespace) -> int:
    from benchmarks.accuracy import AccuracyConfig, check_accuracy, format_accuracy, write_accuracy

    config = AccuracyConfig(
        target=args.target,
        model=args.model,
        protocol=args.protocol,
        dataset=args.dataset,
        version=args.version,
        label=args.label,
        repository=args.repository,
        batch_size=args.batch_size,
        limit=args.limit,
        require_equal=not args.allow_difference,
        min_agreement=0.99 if args.allow_difference else 1.0,
        out=args.out,
        precision=args.precision,
        max_fp16_drop=args.max_fp16_drop,
    )
    result = check_accuracy(config)
    print(format_accuracy(result))
    if args.out:
        write_accuracy(result, args.out)
    return 1 if result["failure"] else 0


if __name__ == "__main__":
    sys.exit(main())
