"""Report files of a run and of a sweep: results.json, report.md, report.html and PNG plots.

Size: every format (JSON, Markdown, HTML, plots) of one results dict, so a change to the
results schema is made in one place.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.metrics import LATENCY_PERCENTILES, percentile_key


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> None:
    """Lay out, write and free one figure."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------- plots of one run


def plot_latency_percentiles(results: dict[str, Any], path: Path) -> None:
    """Bar chart of latency percentiles (our perf_counter samples) with Locust's p50/p95/p99."""
    plt = _pyplot()
    latency = results["latency_ms"]
    keys = [percentile_key(q) for q in LATENCY_PERCENTILES]
    ours = [latency.get(k, 0.0) for k in keys]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(keys))
    ax.bar(x - 0.2, ours, width=0.4, label="perf_counter samples")
    aggregated = results["locust"].get("aggregated") or {}
    locust_values = {
        "p50": aggregated.get("median_ms"),
        "p95": aggregated.get("p95_ms"),
        "p99": aggregated.get("p99_ms"),
    }
    bars = [locust_values.get(k) or 0.0 for k in keys]
    ax.bar(x + 0.2, bars, width=0.4, label="Locust (whole ms)")
    ax.set_xticks(x, keys)
    ax.set_ylabel("latency (ms)")
    cfg = results["config"]
    ax.set_title(
        f"{cfg['protocol']} {results['server']}: {cfg['users']} users,"
        f" {cfg['images_per_request']} img/request"
    )
    ax.legend()
    _save(plt, fig, path)


def plot_throughput(results: dict[str, Any], path: Path) -> None:
    """Completed requests per second over the run, warm-up shaded."""
    plt = _pyplot()
    series = results["timeseries"]
    fig, ax = plt.subplots(figsize=(7, 4))
    times, rates = list(series["t_s"]), list(series["requests_per_s"])
    if times:  # close the last bucket so the step line covers it
        times.append(times[-1] + float(series.get("bucket_s") or 1.0))
        rates.append(rates[-1])
    ax.plot(times, rates, drawstyle="steps-post", label="requests/s")
    ax.set_ylim(bottom=0)
    warmup = series.get("warmup_s") or 0
    if warmup:
        ax.axvspan(0, warmup, color="grey", alpha=0.2, label="warm-up (excluded)")
    ax.axhline(
        results["throughput"]["requests_per_s"], color="C1", linestyle="--", label="measured mean"
    )
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("requests/s")
    ax.set_title("Throughput over time")
    ax.legend()
    _save(plt, fig, path)


def plot_confusion(results: dict[str, Any], path: Path) -> None:
    """Confusion matrix of the served answers."""
    plt = _pyplot()
    accuracy = results["accuracy"]
    matrix = np.asarray(accuracy["confusion_matrix"])
    names = accuracy["class_names"]
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("served answer")
    ax.set_ylabel("true class")
    ax.set_title(f"Served answers: accuracy {accuracy['accuracy']:.4f}")
    fig.colorbar(image, ax=ax)
    _save(plt, fig, path)


# --------------------------------------------------------------------------- one run


def _run_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    cfg, thr, lat, acc = (
        results["config"],
        results["throughput"],
        results["latency_ms"],
        results["accuracy"],
    )
    verdict = "FAILED" if results["failure"] else "passed"
    lines = [
        f"# Benchmark: {cfg['model']} over {cfg['protocol']} at {results['server']}",
        "",
        f"Verdict: **{verdict}**",
    ]
    lines += [f"- {reason}" for reason in results["failure_reasons"]]
    lines += [
        "",
        f"{results['created_at']} on {results['machine']['hostname']}"
        f" ({results['machine']['cpu_count']} CPUs, {results['machine']['platform']}).",
        f"{cfg['users']} users (spawn rate {cfg['spawn_rate']}), {cfg['processes']} Locust"
        f" process(es), {cfg['images_per_request']} image(s) per request,"
        f" payload {cfg['payload_format']}, warm-up {cfg['warmup_s']} s excluded,"
        f" measured {cfg['duration_s']} s.",
        "",
        "## Throughput and latency",
        "",
        "| requests/s | images/s | requests | errors | p50 ms | p90 ms | p95 ms | p99 ms | p99.9 ms"
        " | max ms | efficiency vs in-process |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {_fmt(thr['requests_per_s'], 1)} | {_fmt(thr['images_per_s'], 1)} | {thr['requests']}"
        f" | {thr['failures']} ({thr['error_ratio']:.2%}) | {_fmt(lat.get('p50'), 3)}"
        f" | {_fmt(lat.get('p90'), 3)} | {_fmt(lat.get('p95'), 3)} | {_fmt(lat.get('p99'), 3)}"
        f" | {_fmt(lat.get('p999'), 3)} | {_fmt(lat.get('max'), 3)}"
        f" | {_fmt(results['ceiling']['efficiency'], 3)} |",
        "",
        f"Latency from `time.perf_counter` around each request ({lat.get('count', 0)} samples);"
        " Locust's own figures (whole milliseconds below 100 ms) are in results.json."
        f" In-process ONNX Runtime ceiling at this batch size:"
        f" {_fmt(results['ceiling']['images_per_s'], 1)} images/s.",
        "",
        "## Accuracy of served answers",
        "",
        "| answers | accuracy | macro precision | macro recall | macro F1 | offline accuracy"
        " | agreement with offline | recorded at training |",
        "|---|---|---|---|---|---|---|---|",
        f"| {acc['count']} | {_fmt(acc['accuracy'], 4)} | {_fmt(acc['macro_precision'], 4)}"
        f" | {_fmt(acc['macro_recall'], 4)} | {_fmt(acc['macro_f1'], 4)}"
        f" | {_fmt(acc['offline_accuracy'], 4)} | {_fmt(acc['agreement'], 4)}"
        f" | {_fmt(acc['recorded_accuracy'], 4)} |",
        "",
        f"Checked: {acc['scope']}.",
        "",
        "Confusion matrix (rows: true class, columns: served answer):",
        "",
        "| | " + " | ".join(acc["class_names"]) + " |",
        "|---" * (len(acc["class_names"]) + 1) + "|",
    ]
    for name, row in zip(acc["class_names"], acc["confusion_matrix"], strict=False):
        lines.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots.items()]
    lines.append("")
    return "\n".join(lines)


def markdown_to_html(markdown: str, title: str) -> str:
    """A small, dependency-free rendering of our own report markdown (tables, lists, images)."""
    body: list[str] = []
    in_table = False
    in_list = False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= {"-"} and c for c in cells):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
                tag = "th"
            else:
                tag = "td"
            body.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("- "):
            if not in_list:
                body.append("<ul>")
                in_list = True
            body.append(f"<li>{_inline(line[2:])}</li>")
            continue
        if in_list:
            body.append("</ul>")
            in_list = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            body.append(
                f'<p><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}"></p>'
            )
        elif line.strip():
            body.append(f"<p>{_inline(line)}</p>")
    if in_table:
        body.append("</table>")
    if in_list:
        body.append("</ul>")
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _inline(text: str) -> str:
    escaped = html.escape(text)
    parts = escaped.split("**")
    escaped = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def write_json(results: dict[str, Any], path: Path) -> None:
    """results.json, with NaN written as null (JSON has no NaN)."""
    path.write_text(json.dumps(_without_nan(results), indent=2, default=_json_default) + "\n")


def _without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_nan(v) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_run_report(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md, report.html and the PNG plots of one run into ``out``."""
    plots = {
        "Latency percentiles": "latency_percentiles.png",
        "Throughput over time": "throughput.png",
        "Confusion matrix of served answers": "confusion_matrix.png",
    }
    plot_latency_percentiles(results, out / plots["Latency percentiles"])
    plot_throughput(results, out / plots["Throughput over time"])
    plot_confusion(results, out / plots["Confusion matrix of served answers"])
    results["files"] = {
        "locust_csv": ["locust_stats.csv", "locust_stats_history.csv", "locust_failures.csv"]
    }
    write_report_files(results, out, _run_markdown(results, plots), plots, "benchmark report")


def write_report_files(
    results: dict[str, Any], out: Path, markdown: str, plots: dict[str, str], title: str
) -> None:
    """report.md, report.html and results.json (listing the files, plots already drawn)."""
    results["files"] = {
        "report_md": "report.md",
        "report_html": "report.html",
        "results_json": "results.json",
        "plots": list(plots.values()),
    } | (results.get("files") or {})
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(markdown_to_html(markdown, title))
    write_json(results, out / "results.json")


# --------------------------------------------------------------------------- sweep


def _series_key(run: dict[str, Any]) -> str:
    cfg = run["config"]
    extra = cfg.get("extra") or {}
    batching = extra.get("batching")
    label = f"{run['server']} {cfg['protocol']}"
    if batching is not None and "batching" not in str(run["server"]):
        label += f" batching={'on' if batching else 'off'}"
    return label + f" k={cfg['images_per_request']}"


def plot_sweep(runs: list[dict[str, Any]], metric: str, path: Path) -> None:
    """Throughput (images/s) or p99 latency against concurrency, one line per server/protocol."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    series: dict[str, list[tuple[int, float]]] = {}
    for run in runs:
        if metric == "throughput":
            value = run["throughput"]["images_per_s"]
        else:
            value = run["latency_ms"].get("p99", float("nan"))
        series.setdefault(_series_key(run), []).append((run["config"]["users"], value))
    for name, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent users")
    ax.set_ylabel("images/s" if metric == "throughput" else "p99 latency (ms)")
    ax.set_title("Throughput vs concurrency" if metric == "throughput" else "p99 vs concurrency")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize="small")
    _save(plt, fig, path)


def write_sweep_report(sweep: dict[str, Any], out: Path) -> None:
    """The comparison report of a sweep: one table, throughput and p99 plots, results.json."""
    runs = sweep["runs"]
    plots = {
        "Throughput vs concurrency": "sweep_throughput.png",
        "p99 latency vs concurrency": "sweep_p99.png",
    }
    plot_sweep(runs, "throughput", out / plots["Throughput vs concurrency"])
    plot_sweep(runs, "p99", out / plots["p99 latency vs concurrency"])
    lines = [
        "# Benchmark sweep",
        "",
        f"{sweep['created_at']} on {sweep['machine']['hostname']}"
        f" ({sweep['machine']['cpu_count']} CPUs). Each row is one Locust run of"
        f" {sweep['duration_s']} s after a {sweep['warmup_s']} s warm-up; efficiency is served"
        " images/s over in-process ONNX Runtime images/s at the same batch size.",
        "",
        f"Verdict: **{'FAILED' if sweep['failure'] else 'passed'}**",
    ]
    lines += [f"- {reason}" for reason in sweep["failure_reasons"]]
    lines += [
        "",
        "| server | protocol | batching | users | img/request | req/s | img/s | p50 ms | p99 ms"
        " | errors | accuracy | agreement | efficiency | verdict | report |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        cfg, thr, lat, acc = run["config"], run["throughput"], run["latency_ms"], run["accuracy"]
        batching = (cfg.get("extra") or {}).get("batching")
        lines.append(
            f"| {run['server']} | {cfg['protocol']} | "
            f"{'n/a' if batching is None else ('on' if batching else 'off')} | {cfg['users']}"
            f" | {cfg['images_per_request']} | {_fmt(thr['requests_per_s'], 1)}"
            f" | {_fmt(thr['images_per_s'], 1)} | {_fmt(lat.get('p50'), 3)}"
            f" | {_fmt(lat.get('p99'), 3)} | {thr['error_ratio']:.2%}"
            f" | {_fmt(acc['accuracy'], 4)} | {_fmt(acc['agreement'], 4)}"
            f" | {_fmt(run['ceiling']['efficiency'], 3)}"
            f" | {'FAIL' if run['failure'] else 'ok'} | {run.get('report_dir', '')} |"
        )
    if sweep.get("ceiling"):
        lines += [
            "",
            f"In-process ONNX Runtime ceiling on {sweep['ceiling']['providers'][0]},"
            f" {sweep['ceiling']['intra_op_threads'] or 'default'} intra-op thread(s);"
            " images/s from the median run, sustained over the whole measurement:",
            "",
            "| batch | images/s | sustained images/s | p50 ms |",
            "|---|---|---|---|",
        ]
        for row in sweep["ceiling"]["results"]:
            lines.append(
                f"| {row['batch_size']} | {_fmt(row['images_per_s'], 1)}"
                f" | {_fmt(row.get('images_per_s_sustained'), 1)}"
                f" | {_fmt(row['latency_ms_p50'], 3)} |"
            )
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots.items()]
    lines.append("")
    markdown = "\n".join(lines)
    sweep["files"] = {
        "report_md": "report.md",
        "report_html": "report.html",
        "results_json": "results.json",
        "plots": list(plots.values()),
    }
    (out / "report.md").write_text(markdown)
    (out / "report.html").write_text(markdown_to_html(markdown, "benchmark sweep"))
    write_json(sweep, out / "results.json")


# --------------------------------------------------------------------------- rate (open loop)

RATE_PERCENTILES = (("p50", ":"), ("p90", "-."), ("p99", "-"), ("p999", "--"))


def _rate_protocols(results: dict[str, Any]) -> list[str]:
    return [p for p in results["config"]["protocols"] if any(
        s["protocol"] == p and not s["skipped"] for s in results["series"])]  # fmt: skip


def plot_rate_latency(results: dict[str, Any], path: Path) -> None:
    """p50/p90/p99/p99.9 (from each request's scheduled time) against offered rate."""
    plt = _pyplot()
    protocols = _rate_protocols(results) or ["rest"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    bound = results["config"]["p99_bound_ms"]
    for ax, protocol in zip(axes[0], protocols, strict=True):
        entries = [s for s in results["series"] if s["protocol"] == protocol and not s["skipped"]]
        for color, entry in enumerate(entries):
            valid = [p for p in entry["points"] if p["valid"] and p["latency_ms"].get("count")]
            for key, style in RATE_PERCENTILES:
                ax.plot([p["offered_rate"] for p in valid], [p["latency_ms"][key] for p in valid],
                        linestyle=style, marker="o", markersize=3, color=f"C{color}",
                        label=f"{entry['server']} {key}")  # fmt: skip
            invalid = [p["offered_rate"] for p in entry["points"] if not p["valid"]]
            if invalid:
                ax.plot(invalid, [bound or 1.0] * len(invalid), "x", color=f"C{color}",
                        label=f"{entry['server']} invalid (generator behind)")  # fmt: skip
        if bound:
            ax.axhline(bound, color="red", linewidth=0.8, label=f"p99 bound {bound:g} ms")
        ax.set_yscale("log")
        ax.set_xlabel("offered requests/s")
        ax.set_ylabel("latency from scheduled send (ms)")
        ax.set_title(f"{protocol}: latency against offered rate")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small")
    _save(plt, fig, path)


def plot_rate_throughput(results: dict[str, Any], path: Path) -> None:
    """Answered (ok) requests/s against offered requests/s; the diagonal is keeping up."""
    plt = _pyplot()
    protocols = _rate_protocols(results) or ["rest"]
    fig, axes = plt.subplots(1, len(protocols), figsize=(6 * len(protocols), 4.5), squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        top = 1.0
        for entry in results["series"]:
            if entry["protocol"] != protocol or entry["skipped"]:
                continue
            valid = [p for p in entry["points"] if p["valid"]]
            rates = [p["offered_rate"] for p in valid]
            ax.plot(rates, [p["achieved_requests_per_s"] for p in valid], marker="o",
                    label=entry["server"])  # fmt: skip
            top = max([top, *rates])
        ax.plot([0, top], [0, top], color="grey", linewidth=0.8, label="achieved = offered")
        ax.set_xlabel("offered requests/s")
        ax.set_ylabel("answered ok requests/s")
        ax.set_title(f"{protocol}: achieved against offered")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(plt, fig, path)


def plot_rate_comparison(results: dict[str, Any], path: Path) -> None:
    """Highest offered rate under the p99 bound, per server, grouped by protocol."""
    plt = _pyplot()
    rows = results["comparison"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    protocols = sorted({r["protocol"] for r in rows}, key=results["config"]["protocols"].index)
    servers = list(dict.fromkeys(r["server"] for r in rows))
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        values = [next((r["highest_rate_under_bound"] or 0 for r in rows
                        if r["server"] == server and r["protocol"] == p), 0) for p in protocols]  # fmt: skip
        ax.bar(np.arange(len(protocols)) + i * width, values, width=width, label=server)
    ax.set_xticks(np.arange(len(protocols)) + width * (len(servers) - 1) / 2, protocols)
    bound = results["config"]["p99_bound_ms"]
    ax.set_ylabel("requests/s")
    ax.set_title(f"Highest offered rate with p99 <= {bound:g} ms and errors < 1%"
                 if bound else "no --p99-bound-ms given")  # fmt: skip
    if servers:
        ax.legend(fontsize="small")
    _save(plt, fig, path)


def _rate_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    cfg = results["config"]
    bound = cfg["p99_bound_ms"]
    lines = [
        f"# Open-loop rate benchmark: {cfg['model']}",
        "",
        f"Verdict: **{'FAILED' if results['failure'] else 'passed'}**",
    ]
    lines += [f"- {reason}" for reason in results["failure_reasons"]]
    lines += [
        "",
        f"{results['created_at']} on {results['machine']['hostname']}"
        f" ({results['machine']['cpu_count']} CPUs, {results['machine']['platform']})."
        f" {cfg['arrival']} arrivals, {cfg['processes']} generator process(es),"
        f" {cfg['images_per_request']} image(s) per request, warm-up {cfg['warmup_s']:g} s"
        f" excluded, {cfg['duration_s']:g} s measured per point, timeout {cfg['timeout_s']:g} s."
        " Latency counts from each request's scheduled send time. A point is valid when the"
        f" generator dispatched at least {cfg['min_send_ratio']:.0%} of the offered requests with a"
        f" scheduling lag p99 under {cfg['max_lag_ms']:g} ms; invalid points show no numbers.",
        "",
    ]
    if results["comparison"]:
        lines += [
            f"## Highest offered rate with p99 <= {bound:g} ms and errors < "
            f"{cfg['max_error_ratio']:.0%}",
            "",
            "| protocol | server | requests/s | verdict | ratio to baseline |",
            "|---|---|---|---|---|",
        ]
        for row in results["comparison"]:
            lines.append(
                f"| {row['protocol']} | {row['server']} | {_fmt(row['highest_rate_under_bound'], 0)}"
                f" | {row['verdict']} | {_fmt(row['ratio_to_baseline'], 2)} |"
            )
        lines.append("")
    for entry in results["series"]:
        lines += [f"## {entry['server']}, {entry['protocol']} ({entry['target']})", ""]
        if entry["skipped"]:
            lines += [f"Skipped: {entry['skipped']}", ""]
            continue
        reference = entry["reference"]
        if reference["differences"]:
            lines += [f"- **reference differs from the served model:** {d}"
                      for d in reference["differences"]]  # fmt: skip
        lines += [f"- reference: {note}" for note in reference["notes"]]
        acc = entry["accuracy"]
        lines += [
            "",
            f"Answers checked: {acc['count']} images, accuracy {_fmt(acc['accuracy'], 4)},"
            f" agreement with the offline answers {_fmt(acc['agreement'], 4)} (offline accuracy"
            f" {_fmt(acc['offline_accuracy'], 4)}); {acc['scope']}.",
            "",
            "| offered/s | valid | ok/s | errors | refused | timeouts | p50 ms | p90 ms | p99 ms"
            " | p99.9 ms | lag p99 ms | connection wait p99 ms | generator CPU % | under bound |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in entry["points"]:
            lat, out = p["latency_ms"], p["outcomes"]
            lines.append(
                f"| {p['offered_rate']:g} | {'yes' if p['valid'] else 'INVALID'}"
                f" | {_fmt(p['achieved_requests_per_s'], 0)} | {p['error_ratio']:.2%}"
                f" | {out['refused']} | {out['timeouts']} | {_fmt(lat.get('p50'))}"
                f" | {_fmt(lat.get('p90'))} | {_fmt(lat.get('p99'))} | {_fmt(lat.get('p999'))}"
                f" | {_fmt(p['scheduling_lag_ms']['p99'])} | {_fmt(p['connection_wait_ms']['p99'])}"
                f" | {', '.join(f'{c:.0f}' for c in p['generator_cpu_percent'])}"
                f" | {_fmt(p['meets_bound'])} |"
            )
        invalid = [p for p in entry["points"] if not p["valid"]]
        lines += [f"- INVALID at {p['offered_rate']:g}/s: {'; '.join(p['invalid_reasons'])}"
                  for p in invalid]  # fmt: skip
        if entry["bound"]:
            lines += ["", f"Bound: {entry['bound']['verdict']}; highest passing"
                      f" {_fmt(entry['bound']['highest_passing'], 0)}/s, lowest failing"
                      f" {_fmt(entry['bound']['lowest_failing'], 0)}/s."]  # fmt: skip
        lines.append("")
    lines += ["## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots.items()]
    lines.append("")
    return "\n".join(lines)


def write_rate_report(results: dict[str, Any], out: Path) -> None:
    """results.json, report.md, report.html and the three plots of ``benchmarks rate``."""
    plots = {
        "Latency against offered rate": "rate_latency.png",
        "Achieved against offered throughput": "rate_throughput.png",
        "Highest rate under the p99 bound, per server": "rate_comparison.png",
    }
    plot_rate_latency(results, out / plots["Latency against offered rate"])
    plot_rate_throughput(results, out / plots["Achieved against offered throughput"])
    plot_rate_comparison(results, out / plots["Highest rate under the p99 bound, per server"])
    write_report_files(
        results, out, _rate_markdown(results, plots), plots, "open-loop rate benchmark"
    )
