"""Happy-path speed of two gateway checkouts side by side (A/B), on loopback.

Gateways started from two checkouts (``--a DIR`` and ``--b DIR``: for example a ``git worktree``
of the commit before a change, and the working tree), ``--pairs`` of each started A B B A ...,
serve the same LeNet repository at once (``model_repository/lenet`` if training has exported it,
else the LeNet-like model of ``tests/tiny_models.py``). For each protocol and concurrency every
round measures each gateway in turn (forwards, then backwards), so a neighbour's burst on this
shared machine hits both sides alike, and so does whatever favours the gateway started second
(one gateway per side, identical code, measured 1.07-1.08x apart); the median over each side's
measurements is reported with the ratio B / A. Load as in ``gateway_speed.py``: Debian's
``wrk`` for REST JSON and V2 binary, nghttp2's ``h2load`` for gRPC, one 28x28 image per request.

    .venv/bin/python -m benchmarks.lab.ab_speed --a /tmp/before --b . [--duration 3] [--rounds 4] [--pairs 2]
        [--concurrency 1,32] [--protocols "REST JSON,V2 binary,gRPC"] [--json out.json]
        [--a-options "..."] [--b-options "--access-log /tmp/b.jsonl"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.hostile_speed import gateway_commit, machine, start_gateway
from benchmarks.lab.gateway_speed import measure, prepare_repository

PROTOCOLS = ("REST JSON", "V2 binary", "gRPC")
#: what --protocols may also name (not measured unless asked for)
MORE_PROTOCOLS = ("V2 gRPC",)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--a", type=Path, required=True, help="checkout A (the baseline)")
    parser.add_argument("--b", type=Path, required=True, help="checkout B (the change)")
    parser.add_argument("--duration", type=float, default=3, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per scenario (median)")
    parser.add_argument("--concurrency", default="1,32", help="comma list")
    parser.add_argument(
        "--protocols",
        default=",".join(PROTOCOLS),
        help=f"comma list of {', '.join(PROTOCOLS + MORE_PROTOCOLS)}",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--pairs",
        type=int,
        default=2,
        help="gateways per side, started A B B A ... (1: one each, started A then B; the second "
        "started measured up to 8%% faster with identical code)",
    )
    parser.add_argument(
        "--a-options", default="", help="extra gateway options for A, one shell-quoted string"
    )
    parser.add_argument(
        "--b-options",
        default="",
        help='extra gateway options for B, e.g. "--access-log /tmp/b.jsonl" (the cost of a '
        "feature: the same checkout as A and B, the feature on in B only)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("h2load") is None:
        sys.exit("wrk and h2load are needed (Debian packages wrk and nghttp2-client)")
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    roots = {"A": args.a.resolve(), "B": args.b.resolve()}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, _model, description = prepare_repository(work)
        options = {"A": shlex.split(args.a_options), "B": shlex.split(args.b_options)}
        # Two gateways of the same checkout measured 1.07-1.08x apart at c=32, the one started
        # second faster (benchmarks/RESULTS.md, 2026-12-06): so each side runs as --pairs
        # gateways, started A B B A ..., and every round measures each of them.
        start_order = [
            name
            for pair in range(args.pairs)
            for name in (("A", "B") if pair % 2 == 0 else ("B", "A"))
        ]
        instances = [
            (name, start_gateway(roots[name], repo, options[name])) for name in start_order
        ]
        try:
            for protocol in [p.strip() for p in args.protocols.split(",")]:
                for concurrency in concurrencies:
                    runs: dict[str, list[tuple[float, float, float, int, float | None]]] = {
                        "A": [],
                        "B": [],
                    }
                    for round_index in range(args.rounds):
                        order = instances if round_index % 2 == 0 else instances[::-1]
                        for name, server in order:
                            runs[name].append(
                                measure(server, protocol, concurrency, args.duration, work)
                            )
                    rows.append(summarise(protocol, concurrency, runs))
                    row = rows[-1]
                    print(
                        f"{protocol:9s} c={concurrency:<3d} A {row['A_requests_per_s']:>9,.0f} "
                        f"B {row['B_requests_per_s']:>9,.0f} req/s  B/A {row['ratio']:.3f}  "
                        f"CPU us/request {_cpu(row)}",
                        flush=True,
                    )
        finally:
            for _, server in instances:
                server.stop()
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "machine": machine(),
        "model": description,
        "checkouts": {
            name: f"{root} at {gateway_commit(root)}"
            + (f" with {shlex.join(options[name])}" if options[name] else "")
            for name, root in roots.items()
        },
        "rounds": args.rounds,
        "pairs": args.pairs,
        "duration_s": args.duration,
        "results": rows,
    }
    print()
    print(table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def summarise(
    protocol: str, concurrency: int, runs: dict[str, list[tuple[float, float, float, int, Any]]]
) -> dict[str, Any]:
    """Medians over the rounds of one scenario, and B / A of the throughput."""
    row: dict[str, Any] = {"protocol": protocol, "concurrency": concurrency}
    for name, results in runs.items():
        row[f"{name}_requests_per_s"] = statistics.median(r[0] for r in results)
        row[f"{name}_p50_ms"] = statistics.median(r[1] for r in results)
        row[f"{name}_p99_ms"] = statistics.median(r[2] for r in results)
        row[f"{name}_errors"] = sum(r[3] for r in results)
        row[f"{name}_all_requests_per_s"] = [round(r[0]) for r in results]
        # The server's CPU time per request (its threads summed): a cost that the load
        # generator's share of the two cores moves less than it moves the rate.
        cpu_us = [r[4] / 100 / r[0] * 1e6 for r in results if r[4] is not None and r[0] > 0]
        row[f"{name}_cpu_us_per_request"] = statistics.median(cpu_us) if cpu_us else None
    row["ratio"] = row["B_requests_per_s"] / row["A_requests_per_s"]
    a_cpu, b_cpu = row["A_cpu_us_per_request"], row["B_cpu_us_per_request"]
    row["cpu_ratio"] = b_cpu / a_cpu if a_cpu and b_cpu else None
    return row


def _cpu(row: dict[str, Any]) -> str:
    a, b, ratio = (
        row.get("A_cpu_us_per_request"),
        row.get("B_cpu_us_per_request"),
        row.get("cpu_ratio"),
    )
    if a is None or b is None or ratio is None:
        return "-"
    return f"{a:.0f} / {b:.0f} ({ratio:.3f})"


def table(report: dict[str, Any]) -> str:
    lines = [
        f"A: {report['checkouts']['A']}",
        f"B: {report['checkouts']['B']}",
        f"{report['model']}; {report.get('pairs', 1)} gateway(s) per side, "
        f"{report['rounds']} interleaved rounds of {report['duration_s']:g} s, medians",
        "",
        "| protocol | concurrency | A req/s | B req/s | B / A | A p50 / p99 ms | B p50 / p99 ms | "
        "server CPU us/request A / B (B / A) | errors A / B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['protocol']} | {r['concurrency']} | {r['A_requests_per_s']:,.0f} | "
            f"{r['B_requests_per_s']:,.0f} | {r['ratio']:.3f} | "
            f"{r['A_p50_ms']:.3f} / {r['A_p99_ms']:.3f} | {r['B_p50_ms']:.3f} / {r['B_p99_ms']:.3f} | "
            f"{_cpu(r)} | {r['A_errors']} / {r['B_errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
