"""What does one request cost the server in CPU time, checkout against checkout?

Throughput on a 2-core machine moves with the load generator's share of the cores; the server's
own CPU time per request (all its threads, from ``/proc``) moves less. This starts one gateway per
checkout (``sh -c 'cd ROOT && exec python -m serving ...'``, as ``ab_speed`` does), then measures
each in turn, forwards then backwards, for ``--rounds`` rounds of one protocol at one concurrency
(``gateway_speed.measure``: ``wrk`` or ``h2load``), and prints each checkout's median CPU
microseconds per request with every round's figure. Read it at a concurrency that keeps the
gateway busy (32): at one caller ONNX Runtime's spinning threads dominate.

    .venv/bin/python -m benchmarks.lab.cpu_per_request /tmp/before /tmp/after [more checkouts]
        [--protocol "V2 binary"] [--concurrency 32] [--duration 3] [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchmarks.hostile_speed import gateway_commit, machine, start_gateway
from benchmarks.lab.gateway_speed import measure, prepare_repository


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository roots to compare")
    parser.add_argument(
        "--protocol", default="V2 binary", help="REST JSON, V2 binary, gRPC or V2 gRPC"
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=3, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    roots = [root.resolve() for root in args.checkouts]
    figures: dict[Path, list[float]] = {root: [] for root in roots}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, _model, description = prepare_repository(work)
        servers = [(root, start_gateway(root, repo, [])) for root in roots]
        try:
            for round_index in range(args.rounds):
                order = servers if round_index % 2 == 0 else servers[::-1]
                for root, server in order:
                    rps, _, _, errors, cpu = measure(
                        server, args.protocol, args.concurrency, args.duration, work
                    )
                    if errors:
                        raise SystemExit(f"{root}: {errors} failed requests")
                    if cpu is not None and rps > 0:
                        figures[root].append(cpu / 100 / rps * 1e6)
        finally:
            for _, server in servers:
                server.stop()
    print(f"{machine()}; {description}")
    print(
        f"{args.protocol}, {args.concurrency} callers, {args.rounds} rounds of {args.duration:g} s"
    )
    for root, values in figures.items():
        median = statistics.median(values) if values else float("nan")
        rounds = ", ".join(f"{value:.1f}" for value in values)
        print(f"{root} at {gateway_commit(root)}: {median:.1f} us/request (rounds: {rounds})")


if __name__ == "__main__":
    main()
