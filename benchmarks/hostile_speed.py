"""What hostile requests do to everyone else, on loopback.

LeNet (``model_repository/lenet`` if training has exported it, else the LeNet-like model from
``tests/tiny_models.py``, as in ``gateway_speed.py``), one gateway subprocess per part
(``python -m serving --device cpu`` on 127.0.0.1, free ports, started from ``--gateway-root``):

1. Normal requests' latency while big images attack. Normal load: one-image TF Serving REST JSON
   ``:predict`` (row format, 28x28x1 uint8) from Debian's ``wrk`` (``-t1 -c4 --latency``, a 30 s
   timeout so slow answers count in the percentiles) for ``--duration`` seconds, in ten phases:

   - unloaded;
   - while a busy loop runs at nice 19 in another process, no attack: the floor of what any
     CPU-bound work at all does to the gateway on this machine;
   - while two attackers (threads here, each an ``httpx`` client sending one request at a time)
     POST the largest PNG the gateway's limits admit to ``/v1/models/lenet:classify_image`` (raw
     body, ``content-type: image/png``). The gateway's ``--max-image-pixels`` (0 = derived from
     the model input, max(2048*2048, 256*H*W): 4,194,304 pixels for 28x28) admits 2048x2048. Of
     four noise PNGs of that size (Pillow's encoding of 8-bit grayscale and of RGB noise; and the
     same hand-made: Adam7 interlaced, every row Paeth-filtered, 16-level noise so that zlib must
     Huffman-decode every byte) the one slowest to decode here with Pillow attacks;
   - while they send the same kind of image one pixel wider and taller, which a gateway with the
     limit must refuse, quickly;
   - while two clients send the largest JSON body of the common kind the limits admit: a TF
     Serving JSON ``:predict`` of ``--max-request-batch`` (1,024) uint8 images in the row format
     (about 3 MB for 28x28x1), whose parsing holds the GIL;
   - while two clients send the same batch as a KServe V2 ``/infer`` with binary data (0.8 MB),
     which costs nothing to decode: what the largest batch's compute does to the others;
   - while one client sends, back to back, a small PNG (28x28, about 58 KB) with 56 compressed
     ancillary chunks (zTXt), each inflating to 1 MiB: small images are decoded on the event
     loop, and Pillow inflates such chunks as it meets them unless the gateway drops them;
   - while one client sends a small JPEG after 60,000 fill bytes (0xFF), which Pillow walks a
     byte at a time in Python unless the gateway counts them;
   - while one client sends 64 bytes that cannot start an image to the same route, refused (400)
     from its first bytes: the floor of what any one back-to-back client of that route costs;
   - unloaded again (how far the baseline drifts).

   Goal: p99 under attack at most 3x the unloaded p99 (the mean of the two unloaded phases; the
   ratio against each is reported too); under the two small-image attacks by one client, p50
   at most 3x the unloaded p50. The attackers' answers (status codes,
   rate, latency) are reported too. They attack as fast as answers come back, so a gateway that
   refuses faster draws a faster attack, whose own CPU shares this machine; ``--attack-rate R``
   paces them to R requests per second in all, to compare two gateways under one attack.
2. Memory after hostile gRPC Predicts: VmRSS of the gateway (``/proc/<pid>/status``) after start-up
   and a warmup of normal requests, then ``--hostile-requests`` (1,000) hostile Predicts in turn
   from a mix of seven kinds (a [2**40, 28, 28, 1] DT_FLOAT without values; the same dims in
   DT_UINT8 with one ``int_val``; a [20000, 28, 28, 1] DT_INT64 with one ``int64_val``; a
   [1, 28, 28, 1] DT_UINT8 with ``int_val`` 300; bytes that are not a protobuf; an unknown model;
   a batch one above ``--max-request-batch``), each with a timeout (``--hostile-order grouped``
   sends each kind's share in a row instead: what one kind alone retains). Then VmRSS again, at
   once and after a pause; goal: growth within 50 MB. Also reported: the status codes by kind,
   whether any was INTERNAL or UNKNOWN, ``/v2/health/ready`` and normal Predicts afterwards, and
   the gateway's exit if it died (nothing caps its memory: a gateway that allocates what a
   request claims shows up here).

Options for the gateway go through ``--gateway-arg=--option=value`` (repeatable, appended as they
are, e.g. ``--gateway-arg=--max-image-pixels=1000000``); none are passed by default, so the script
runs against gateways with and without the pixel limit. ``--gateway-root DIR`` starts the gateway
from another checkout (``cd DIR && PYTHONPATH=DIR python -m serving``), e.g. a ``git worktree`` of
an older commit. The load generators and the gateway share the machine's cores: on a 2-core host
the numbers are a lower bound of what the gateway could do alone.

    .venv/bin/python -m benchmarks.hostile_speed [--duration 10] [--json out.json]
        [--gateway-root DIR] [--gateway-arg=--max-image-pixels=N ...] [--only latency|memory]
        [--attack-rate R]

Size: each numbered part is one self-contained experiment (its gateway, its attackers, its
verdict) run by one command; they share the harness below (ports, wrk, VmRSS) and one report,
which is why they stay in one module.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import re
import resource
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from benchmarks.lab.gateway_speed import (
    GATEWAY_READY,
    ROOT,
    WRK_LUA,
    Server,
    _ms,
    cpu_seconds,
    model_file,
    one_image,
    percentile,
    prepare_repository,
    rest_json_body,
)

PREDICT_PATH = "/v1/models/{model}:predict"
IMAGE_PATH = "/v1/models/{model}:classify_image"
V2_INFER_PATH = "/v2/models/{model}/infer"
MODEL = "lenet"
WRK_TIMEOUT_S = 30  # wrk drops answers slower than its timeout from the percentiles (default 2 s)
ATTACK_TIMEOUT_S = 60.0  # one attack request
P99_GOAL = 3.0  # p99 under attack / unloaded
P50_GOAL = 3.0  # p50 under one attacker's small hostile images / unloaded
RSS_GOAL_MB = 50.0
DEFAULT_MAX_BATCH = 1024  # the gateway's --max-request-batch
DEFAULT_PIXEL_FLOOR = 2048 * 2048  # the gateway's --max-image-pixels 0: max(this, 256*H*W)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- gateway -----------------------------------------------------------------------------------
def start_gateway(root: Path, repo: Path, extra: list[str]) -> Server:
    """``python -m serving`` with ``root`` as working directory and PYTHONPATH (``sh`` changes
    directory, then ``exec``s, so the process id is the gateway's)."""
    command = [
        "sh", "-c", 'cd "$0" && exec "$@"', str(root),
        sys.executable, "-m", "serving", "--repository", str(repo), "--host", "127.0.0.1",
        "--http-port", "0", "--grpc-port", "0", "--device", "cpu", "--poll-interval-s", "0",
        *extra,
    ]  # fmt: skip
    return Server(command, wait_for=GATEWAY_READY, env={"PYTHONPATH": str(root)})


def gateway_knows(root: Path, option: str) -> bool:
    """Whether the gateway at ``root`` lists ``option`` in its ``--help``."""
    out = subprocess.run(
        [sys.executable, "-m", "serving", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=60,
        check=False,
    ).stdout
    return option in out


def gateway_commit(root: Path) -> str:
    """``<short commit>`` plus how many tracked files differ from it (read-only git)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # git status must not rewrite the index

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                              check=True, env=env, timeout=30).stdout  # fmt: skip

    try:
        commit = git("rev-parse", "--short", "HEAD").strip()
        changed = git("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit} ({len(changed)} tracked files modified)" if changed else f"{commit} (clean)"


def option_value(args: list[str], option: str) -> str | None:
    """The value of ``option`` in raw gateway arguments (``--opt=v`` or ``--opt v``), last wins."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            value = arg.split("=", 1)[1]
        elif arg == option and i + 1 < len(args):
            value = args[i + 1]
    return value


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a live process, in kB; empty once it has exited."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {key: int(value) for key, value in re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.M)}


def error_lines(server: Server, since: int) -> int:
    return sum(1 for line in server.lines[since:] if " ERROR " in line)


# --- model and attack images -------------------------------------------------------------------
def model_input(repo: Path) -> tuple[str, int, int, int]:
    """(input name, height, width, channels) of the LeNet ONNX (NHWC)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_file(repo)), providers=["CPUExecutionProvider"])
    spec = session.get_inputs()[0]
    dims = [d if isinstance(d, int) and d > 0 else 0 for d in spec.shape[1:]]
    height, width, channels = [*dims, 0, 0, 0][:3]
    return spec.name, height or 28, width or 28, channels or 1


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def crafted_png(side: int, channels: int, rng: np.random.Generator) -> bytes:
    """A noise PNG made slow to decode: Adam7 interlaced (seven sub-images to reassemble), every
    row Paeth-filtered (the costliest filter to undo) and 16-level filtered bytes, which zlib
    Huffman-codes (inflating random 8-bit noise is mostly copying stored blocks)."""
    # Adam7's seven passes: (first column, first row, column step, row step)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))  # fmt: skip
    raw = []
    for x0, y0, dx, dy in passes:
        width, height = -(-(side - x0) // dx), -(-(side - y0) // dy)
        if width > 0 and height > 0:
            rows = rng.integers(0, 16, size=(height, 1 + width * channels), dtype=np.uint8)
            rows[:, 0] = 4  # filter type Paeth
            raw.append(rows.tobytes())
    header = struct.pack(">IIBBBBB", side, side, 8, 0 if channels == 1 else 2, 0, 0, 1)
    return (
        PNG_MAGIC
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(b"".join(raw), 6))
        + _chunk(b"IEND", b"")
    )


def pillow_png(side: int, channels: int, rng: np.random.Generator) -> bytes:
    """8-bit noise as Pillow writes it (grayscale or RGB)."""
    from PIL import Image

    shape = (side, side) if channels == 1 else (side, side, channels)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


VARIANTS = {
    "grayscale noise (Pillow)": lambda side, rng: pillow_png(side, 1, rng),
    "RGB noise (Pillow)": lambda side, rng: pillow_png(side, 3, rng),
    "grayscale, Adam7 + Paeth, 16-level noise": lambda side, rng: crafted_png(side, 1, rng),
    "RGB, Adam7 + Paeth, 16-level noise": lambda side, rng: crafted_png(side, 3, rng),
}


@dataclass
class AttackImage:
    """One candidate attack PNG and what decoding it costs in this process."""

    variant: str
    side: int
    png_bytes: int
    decode_ms: float  # Image.open + load (median)
    decode_convert_resize_ms: float  # and the gateway's conversion to the model's input (median)
    png: bytes = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "png"}


def time_decode(
    png: bytes, height: int, width: int, channels: int, repeat: int = 3
) -> tuple[float, float]:
    """Median (decode ms, decode + convert + resize ms), as ``serving/images.py`` does."""
    from PIL import Image

    decode, total = [], []
    for _ in range(repeat):
        start = time.perf_counter()
        with Image.open(io.BytesIO(png)) as image:
            image.load()
            loaded = time.perf_counter()
            converted = image.convert("L" if channels == 1 else "RGB")
            converted.resize((width, height), Image.Resampling.BILINEAR).load()
        decode.append(loaded - start)
        total.append(time.perf_counter() - start)
    return float(np.median(decode)) * 1000, float(np.median(total)) * 1000


def attack_image(variant: str, side: int, shape: tuple[int, int, int]) -> AttackImage:
    png = VARIANTS[variant](side, np.random.default_rng(side))
    decode_ms, total_ms = time_decode(png, *shape)
    return AttackImage(variant, side, len(png), decode_ms, total_ms, png)


# --- load --------------------------------------------------------------------------------------
def wrk_phase(
    url: str, body_file: Path, script: Path, concurrency: int, duration: int, pid: int
) -> dict[str, Any]:
    """One wrk run: throughput, latency percentiles, errors, and who used the CPU."""
    env = {
        **os.environ,
        "WRK_BODY": str(body_file),
        "WRK_CTYPE": "application/json",
        "WRK_HEADER_LENGTH": "",
    }
    children, own = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )
    gateway_before, started = cpu_seconds(pid), time.monotonic()
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--latency",
               "--timeout", f"{WRK_TIMEOUT_S}s", "-s", str(script), url]  # fmt: skip
    out = subprocess.run(
        command, env=env, capture_output=True, text=True, check=True,
        timeout=duration + WRK_TIMEOUT_S + 60,
    ).stdout  # fmt: skip
    elapsed = time.monotonic() - started
    gateway_cpu = (cpu_seconds(pid) - gateway_before) / elapsed * 100
    children_after, own_after = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )

    def used(after: Any, before: Any) -> float:  # CPU % over the run
        return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / elapsed * 100

    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, out, re.M)
        assert match, f"{pattern!r} not in wrk output:\n{out}"
        return match

    avg, _stdev, worst = find(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)").groups()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    kinds = ("connect", "read", "write", "timeout")
    socket_errors = dict(zip(kinds, map(int, sockets.groups()), strict=True)) if sockets else {}
    return {
        "requests": int(find(r"(\d+) requests in").group(1)),
        "requests_per_s": float(find(r"Requests/sec:\s+([0-9.]+)").group(1)),
        "avg_ms": _ms(avg),
        **{f"p{q}_ms": _ms(find(rf"^\s+{q}%\s+(\S+)").group(1)) for q in (50, 90, 99)},
        "max_ms": _ms(worst),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": socket_errors,
        "gateway_cpu_percent": gateway_cpu,
        "wrk_cpu_percent": used(children_after, children),
        "this_process_cpu_percent": used(own_after, own),  # the attacker threads, mostly
    }


class Attackers:
    """``count`` threads, each an httpx client POSTing ``body`` one request at a time, as fast
    as answers come back, or at most ``rate`` requests per second in all (0 = no cap): a
    closed-loop attacker's rate rises as the gateway refuses faster, and on a shared machine its
    own CPU then weighs on the gateway, so comparisons of two gateways want the same rate."""

    def __init__(
        self, url: str, body: bytes, count: int, headers: dict[str, str], rate: float = 0.0
    ) -> None:
        self.url, self.body, self.headers = url, body, headers
        self.interval = count / rate if rate > 0 else 0.0  # per thread
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.records: list[tuple[str, float]] = []  # (HTTP status or exception name, seconds)
        self.examples: dict[str, str] = {}  # first answer per status, shortened
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]
        self.started = self.elapsed = 0.0

    def _loop(self) -> None:
        import httpx

        next_send = time.perf_counter()
        with httpx.Client(timeout=ATTACK_TIMEOUT_S) as client:
            while not self.stopping.is_set():
                if self.interval:
                    # Paced: never a burst to catch up after a slow answer.
                    next_send = max(next_send + self.interval, time.perf_counter())
                    if self.stopping.wait(max(0.0, next_send - time.perf_counter())):
                        break
                start = time.perf_counter()
                try:
                    reply = client.post(self.url, content=self.body, headers=self.headers)
                    status, text = str(reply.status_code), reply.text[:160]
                except httpx.HTTPError as exc:
                    status, text = type(exc).__name__, str(exc)[:160]
                    time.sleep(0.05)  # a dead gateway must not make this spin
                with self.lock:
                    self.records.append((status, time.perf_counter() - start))
                    self.examples.setdefault(status, text)

    def start(self, settle_s: float = 5.0) -> None:
        """Start, and wait until an answer came back (or ``settle_s``): steady state."""
        self.started = time.perf_counter()
        for thread in self.threads:
            thread.start()
        end = time.monotonic() + settle_s
        while not self.records and time.monotonic() < end:
            time.sleep(0.01)

    def stop(self) -> dict[str, Any]:
        self.stopping.set()
        for thread in self.threads:
            thread.join(ATTACK_TIMEOUT_S + 5)
        self.elapsed = time.perf_counter() - self.started
        answered = [seconds for status, seconds in self.records if status.isdigit()]
        return {
            "attackers": len(self.threads),
            "requests": len(self.records),
            "answered": len(answered),
            "statuses": dict(Counter(status for status, _ in self.records)),
            "examples": self.examples,
            "seconds": self.elapsed,
            "answered_per_s": len(answered) / self.elapsed if self.elapsed else 0.0,
            "p50_ms": percentile(answered, 50) * 1000,
            "p99_ms": percentile(answered, 99) * 1000,
            "max_ms": max(answered, default=float("nan")) * 1000,
        }


class Attack(NamedTuple):
    """What attackers POST: ``path`` (with ``{model}``), the body and its headers, and how the
    report names it."""

    what: str
    path: str
    body: bytes
    headers: dict[str, str]
    summary: dict[str, Any]


def image_attack(image: AttackImage) -> Attack:
    what = f"{image.side}x{image.side} {image.variant}"
    summary = {"what": what, "bytes": image.png_bytes, "image": image.summary()}
    return Attack(what, IMAGE_PATH, image.png, {"content-type": "image/png"}, summary)


def json_batch_attack(shape: tuple[int, int, int], rows: int) -> Attack:
    """The largest body of the common kind the limits admit: a TF Serving JSON ``:predict`` of
    ``rows`` (the gateway's --max-request-batch) uint8 images in the row format, what a client
    sending big batches as JSON sends."""
    images = np.random.default_rng(1).integers(0, 256, size=(rows, *shape), dtype=np.uint8)
    body = json.dumps({"instances": images.tolist()}, separators=(",", ":")).encode()
    what = f"TF JSON :predict of {rows} images ({len(body) / 1e6:.1f} MB)"
    headers = {"content-type": "application/json"}
    return Attack(what, PREDICT_PATH, body, headers, {"what": what, "bytes": len(body)})


def binary_batch_attack(input_name: str, shape: tuple[int, int, int], rows: int) -> Attack:
    """The same batch as a KServe V2 ``/infer`` with its tensor as binary data: no parsing to
    speak of, so what it costs the others is its compute."""
    images = np.random.default_rng(1).integers(0, 256, size=(rows, *shape), dtype=np.uint8)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": [rows, *shape],
                    "datatype": "UINT8",
                    "parameters": {"binary_data_size": images.nbytes},
                }
            ]
        }
    ).encode()
    body = header + images.tobytes()
    what = f"V2 binary /infer of {rows} images ({len(body) / 1e6:.1f} MB)"
    headers = {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
    return Attack(what, V2_INFER_PATH, body, headers, {"what": what, "bytes": len(body)})


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def small_image(kind: str) -> bytes:
    """A 28x28 grayscale PNG or JPEG, as Pillow writes it."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (28, 28), 100).save(out, format=kind)
    return out.getvalue()


def inflating_chunks_attack(chunks: int = 56) -> Attack:
    """A small PNG whose ``chunks`` zTXt chunks (about 1 KB each) inflate to 1 MiB each."""
    png = small_image("PNG")
    text = _png_chunk(b"zTXt", b"k\0\0" + zlib.compress(bytes(1 << 20), 9))
    body = png[:33] + text * chunks + png[33:]  # after the signature and IHDR
    what = f"28x28 PNG with {chunks} zTXt chunks of 1 MiB inflated ({len(body) / 1e3:.0f} KB)"
    headers = {"content-type": "image/png"}
    return Attack(what, IMAGE_PATH, body, headers, {"what": what, "bytes": len(body)})


def fill_bytes_attack(fill: int = 60_000) -> Attack:
    """A small JPEG with ``fill`` fill bytes (0xFF) before its first segment."""
    jpeg = small_image("JPEG")
    body = jpeg[:2] + b"\xff" * fill + jpeg[2:]
    what = f"28x28 JPEG after {fill:,} fill bytes ({len(body) / 1e3:.0f} KB)"
    headers = {"content-type": "image/jpeg"}
    return Attack(what, IMAGE_PATH, body, headers, {"what": what, "bytes": len(body)})


def not_an_image_attack() -> Attack:
    """64 bytes that cannot start a PNG or JPEG: the cheapest answer the image route gives."""
    body = b"GIF89a" + bytes(58)
    what = "64 bytes that are no image (refused from the first bytes)"
    headers = {"content-type": "application/octet-stream"}
    return Attack(what, IMAGE_PATH, body, headers, {"what": what, "bytes": len(body)})


def latency_part(
    root: Path,
    repo: Path,
    gateway_args: list[str],
    images: tuple[AttackImage, AttackImage],
    batch_attacks: tuple[Attack, Attack],
    concurrency: int,
    attackers: int,
    duration: int,
    work: Path,
    attack_rate: float = 0.0,
) -> dict[str, Any]:
    """Part 1: wrk phases unloaded / under a busy loop / under admitted images / under refused
    images / under big JSON batches / under big binary batches / unloaded."""
    import httpx

    body_file, script = work / "body.json", work / "post.lua"
    body_file.write_bytes(rest_json_body())
    script.write_text(WRK_LUA)
    server = start_gateway(root, repo, gateway_args)
    phases: list[dict[str, Any]] = []
    try:
        pid = server.process.pid
        with httpx.Client(base_url=server.url, timeout=30) as client:  # warmup
            for _ in range(100):
                client.post(
                    PREDICT_PATH.format(model=MODEL),
                    content=rest_json_body(),
                    headers={"content-type": "application/json"},
                )
            small = pillow_png(28, 1, np.random.default_rng(0))
            warm = client.post(
                IMAGE_PATH.format(model=MODEL), content=small, headers={"content-type": "image/png"}
            )
        print(
            f"  gateway up (pid {pid}); a 28x28 PNG to :classify_image: {warm.status_code}",
            flush=True,
        )
        url = server.url + PREDICT_PATH.format(model=MODEL)
        # (kind, label, attack): the burner phase is the machine's floor, the cost of any busy
        # thread at all (a nice-19 busy loop in another process, no requests).
        admitted, above = (image_attack(image) for image in images)
        json_attack, binary_attack = batch_attacks
        png_chunks, jpeg_fill = inflating_chunks_attack(), fill_bytes_attack()
        no_image = not_an_image_attack()
        # (kind, label, attack, attackers)
        plan: list[tuple[str, str, Attack | None, int]] = [
            ("unloaded", "unloaded", None, 0),
            ("burner", "a nice-19 busy loop, no attack (the floor)", None, 0),
            ("admitted", f"{attackers} attackers, {images[0].side}x{images[0].side} "
             "(largest admitted)", admitted, attackers),
            ("above", f"{attackers} attackers, {images[1].side}x{images[1].side} "
             "(just above the limit)", above, attackers),
            ("json", f"{attackers} clients, {json_attack.what}", json_attack, attackers),
            ("batch", f"{attackers} clients, {binary_attack.what}", binary_attack, attackers),
            ("png_chunks", f"1 attacker, {png_chunks.what}", png_chunks, 1),
            ("jpeg_fill", f"1 attacker, {jpeg_fill.what}", jpeg_fill, 1),
            ("one_floor", f"1 attacker, {no_image.what}", no_image, 1),
            ("unloaded_again", "unloaded again", None, 0),
        ]  # fmt: skip
        for kind, name, attack_plan, count in plan:
            if server.process.poll() is not None:
                phases.append(
                    {
                        "phase": name,
                        "kind": kind,
                        "error": f"gateway exited ({server.process.returncode})",
                    }
                )
                continue
            attack = (
                Attackers(
                    server.url + attack_plan.path.format(model=MODEL),
                    attack_plan.body,
                    count,
                    attack_plan.headers,
                    attack_rate,
                )
                if attack_plan
                else None
            )
            burner = (
                subprocess.Popen(["nice", "-n", "19", sys.executable, "-c", "while True: pass"])
                if kind == "burner"
                else None
            )
            if attack:
                attack.start()
            try:
                result: dict[str, Any] = {
                    "phase": name,
                    "kind": kind,
                    **wrk_phase(url, body_file, script, concurrency, duration, pid),
                }
            except (subprocess.SubprocessError, AssertionError) as exc:
                result = {"phase": name, "kind": kind, "error": f"wrk failed: {exc}"}
            finally:
                if burner:
                    burner.kill()
                    burner.wait()
            if attack and attack_plan:
                result["attack"] = {**attack_plan.summary, **attack.stop()}
            phases.append(result)
            print(f"  {name}: done", flush=True)
    finally:
        exit_code = server.process.poll()
        server.stop()
    return {
        "phases": phases,
        "gateway_exit_code_during_run": exit_code,
        "gateway_log_errors": error_lines(server, 0),
    }


# --- hostile gRPC ------------------------------------------------------------------------------
def hostile_kinds(
    input_name: str, shape: tuple[int, int, int], batch_limit: int
) -> list[tuple[str, Any]]:
    """(label, PredictRequest or raw bytes) for each kind of hostile Predict."""
    from clients import wire

    height, width, channels = shape

    def request(dtype: int, dims: list[int], model: str = MODEL) -> tuple[Any, Any]:
        message = wire.PredictRequest()
        message.model_spec.name = model
        tensor = message.inputs[input_name]
        tensor.dtype = dtype  # type: ignore[assignment]
        for size in dims:
            tensor.tensor_shape.dim.add(size=size)
        return message, tensor

    huge = [2**40, height, width, channels]
    no_values, _ = request(wire.DataType.DT_FLOAT, huge)
    one_uint8, tensor = request(wire.DataType.DT_UINT8, huge)
    tensor.int_val.append(7)
    int64_fill, tensor = request(wire.DataType.DT_INT64, [20000, height, width, channels])
    tensor.int64_val.append(7)
    out_of_range, tensor = request(wire.DataType.DT_UINT8, [1, height, width, channels])
    tensor.int_val.append(300)
    unknown = wire.build_predict_request("no-such-model", {input_name: one_image()})
    big_batch = wire.build_predict_request(
        MODEL, {input_name: np.zeros((batch_limit + 1, height, width, channels), np.uint8)}
    )
    garbage = b"\xff\xff\xff\xff" + np.random.default_rng(0).bytes(1020)  # wire type 7: invalid
    dims = f"{height},{width},{channels}"
    return [
        (f"DT_FLOAT [2**40,{dims}], no values", no_values),
        (f"DT_UINT8 [2**40,{dims}], one int_val", one_uint8),
        (f"DT_INT64 [20000,{dims}], one int64_val", int64_fill),
        (f"DT_UINT8 [1,{dims}], int_val 300", out_of_range),
        ("garbage bytes (not a protobuf)", garbage),
        ("unknown model name", unknown),
        (f"batch {batch_limit + 1} (limit {batch_limit})", big_batch),
    ]


def memory_part(
    root: Path,
    repo: Path,
    gateway_args: list[str],
    input_name: str,
    shape: tuple[int, int, int],
    count: int,
    timeout_s: float,
    budget_s: float,
    settle_s: float,
    grouped: bool = False,
) -> dict[str, Any]:
    """Part 2: RSS before and after ``count`` hostile gRPC Predicts, the kinds in turn (or, with
    ``grouped``, each kind's share in a row)."""
    import grpc
    import httpx

    from clients import wire

    batch_limit = int(
        option_value(gateway_args, "--max-request-batch")
        or os.environ.get("SERVING_MAX_REQUEST_BATCH")
        or 1024
    )
    kinds = hostile_kinds(input_name, shape, batch_limit)
    server = start_gateway(root, repo, gateway_args)
    pid = server.process.pid
    result: dict[str, Any] = {
        "requests_planned": count,
        "timeout_s": timeout_s,
        "order": "grouped" if grouped else "mixed",
    }
    channel = grpc.insecure_channel(server.grpc)
    try:
        predict = channel.unary_unary(
            wire.PREDICT_METHOD,
            request_serializer=wire.PredictRequest.SerializeToString,
            response_deserializer=wire.PredictResponse.FromString,
        )
        raw = channel.unary_unary(wire.PREDICT_METHOD)  # bytes as they are
        normal = wire.build_predict_request(MODEL, {input_name: one_image()})
        result["rss_mb_after_start"] = memory_kb(pid).get("VmRSS", 0) / 1024
        with httpx.Client(base_url=server.url, timeout=30) as client:  # warmup, both transports
            for _ in range(200):
                predict(normal, timeout=30)
                client.post(
                    PREDICT_PATH.format(model=MODEL),
                    content=rest_json_body(),
                    headers={"content-type": "application/json"},
                )
        before = memory_kb(pid)
        result["rss_mb_after_warmup"] = before.get("VmRSS", 0) / 1024
        result["peak_rss_mb_after_warmup"] = before.get("VmHWM", 0) / 1024
        log_mark = len(server.lines)
        statuses: dict[str, Counter[str]] = {label: Counter() for label, _ in kinds}
        seconds: dict[str, list[float]] = {label: [] for label, _ in kinds}
        sent, end = 0, time.monotonic() + budget_s
        for i in range(count):
            if time.monotonic() > end or server.process.poll() is not None:
                break
            label, message = kinds[i * len(kinds) // count if grouped else i % len(kinds)]
            call = raw if isinstance(message, bytes) else predict
            start = time.perf_counter()
            try:
                call(message, timeout=timeout_s)
                status = "OK"
            except grpc.RpcError as exc:
                status = exc.code().name  # type: ignore[attr-defined]
            seconds[label].append(time.perf_counter() - start)
            statuses[label][status] += 1
            sent += 1
            if (i + 1) % 250 == 0:
                print(f"  {i + 1} hostile requests sent", flush=True)
        after = memory_kb(pid)
        time.sleep(settle_s)
        settled = memory_kb(pid)
        alive = server.process.poll() is None
        ok_after = 0
        if alive:
            for _ in range(50):
                try:
                    predict(normal, timeout=10)
                    ok_after += 1
                except grpc.RpcError:
                    pass
        try:
            reply = httpx.get(server.url + "/v2/health/ready", timeout=10)
            health = f"{reply.status_code} {reply.text.strip()}"
        except httpx.HTTPError as exc:
            health = f"no answer ({type(exc).__name__})"
        bad = {
            label: {s: n for s, n in counts.items() if s in ("INTERNAL", "UNKNOWN")}
            for label, counts in statuses.items()
        }
        result.update(
            {
                "requests_sent": sent,
                "by_kind": [
                    {
                        "kind": label,
                        "sent": len(seconds[label]),
                        "statuses": dict(statuses[label]),
                        "p50_ms": percentile(seconds[label], 50) * 1000,
                        "max_ms": max(seconds[label], default=float("nan")) * 1000,
                    }
                    for label, _ in kinds
                ],
                "statuses": dict(sum(statuses.values(), Counter())),
                "internal_or_unknown": {label: counts for label, counts in bad.items() if counts},
                "rss_mb_after_hostile": after.get("VmRSS", 0) / 1024 if after else None,
                "rss_mb_after_pause": settled.get("VmRSS", 0) / 1024 if settled else None,
                "pause_s": settle_s,
                "peak_rss_mb": settled.get("VmHWM", 0) / 1024 if settled else None,
                "gateway_alive": alive,
                "gateway_exit_code": server.process.returncode,
                "health_after": health,
                "normal_predicts_ok_after": f"{ok_after}/{50 if alive else 0}",
                "gateway_log_errors": error_lines(server, log_mark),
            }
        )
        for key in ("after_hostile", "after_pause"):
            value = result[f"rss_mb_{key}"]
            result[f"rss_growth_mb_{key}"] = (
                value - result["rss_mb_after_warmup"] if value else None
            )
        if not alive:
            result["gateway_last_log_lines"] = server.lines[-20:]
    finally:
        channel.close()
        server.stop()
    return result


def attack_images(
    gateway_args: list[str], shape: tuple[int, int, int], side: int | None
) -> tuple[int, AttackImage, AttackImage, list[AttackImage]]:
    """(pixel limit, slowest admitted image, the same kind one pixel over, all candidates)."""
    value = option_value(gateway_args, "--max-image-pixels") or os.environ.get(
        "SERVING_MAX_IMAGE_PIXELS"
    )
    limit = int(value) if value and int(value) > 0 else max(
        DEFAULT_PIXEL_FLOOR, 256 * shape[0] * shape[1]
    )  # fmt: skip
    side = side or math.isqrt(limit)
    print(f"attack images: {side}x{side}, timing decodes...", flush=True)
    candidates = [attack_image(variant, side, shape) for variant in VARIANTS]
    for c in candidates:
        print(f"  {c.variant}: {c.png_bytes:,} bytes, decode {c.decode_ms:.1f} ms, "
              f"+convert+resize {c.decode_convert_resize_ms:.1f} ms", flush=True)  # fmt: skip
    chosen = max(candidates, key=lambda c: c.decode_convert_resize_ms)
    return limit, chosen, attack_image(chosen.variant, side + 1, shape), candidates


def add_ratios(latency: dict[str, Any]) -> None:
    """p99 under each attack (and under the busy loop) over the unloaded p99: the mean of the
    unloaded runs before and after (the baseline drifts on a shared machine), and the range
    against either run."""
    p99 = {phase.get("kind"): phase.get("p99_ms") for phase in latency["phases"]}
    p50 = {phase.get("kind"): phase.get("p50_ms") for phase in latency["phases"]}
    p50_bases = [b for b in (p50.get("unloaded"), p50.get("unloaded_again")) if b]
    p50_base = sum(p50_bases) / len(p50_bases) if p50_bases else None
    floor = p50.get("one_floor")
    for key, kind in (("p50_ratio_png_chunks", "png_chunks"), ("p50_ratio_jpeg_fill", "jpeg_fill")):
        value = p50.get(kind)
        latency[key] = value / p50_base if p50_base and value else None
        latency[key + "_over_floor"] = value / floor if floor and value else None
        latency[key + "_range"] = (
            [value / max(p50_bases), value / min(p50_bases)] if p50_bases and value else None
        )
    unloaded, again = p99.get("unloaded"), p99.get("unloaded_again")
    latency["unloaded_p99_drift"] = again / unloaded if unloaded and again else None
    bases = [b for b in (unloaded, again) if b]
    base = sum(bases) / len(bases) if bases else None
    for key, kind in (
        ("p99_ratio_admitted", "admitted"),
        ("p99_ratio_above_limit", "above"),
        ("p99_ratio_json", "json"),
        ("p99_ratio_batch", "batch"),
        ("p99_ratio_busy_loop", "burner"),
    ):
        value = p99.get(kind)
        latency[key] = value / base if base and value else None
        latency[key + "_range"] = (
            [value / max(bases), value / min(bases)] if bases and value else None
        )


# --- report ------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    memory = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model.group(1).strip() if model else "unknown",
        "memory_gb": round(int(memory.group(1)) / 1024**2, 1) if memory else None,
        "python": sys.version.split()[0],
    }


def finite(value: Any) -> Any:
    """``value`` with NaN floats as None, for strict JSON."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return None if isinstance(value, float) and value != value else value


def _f(value: Any, digits: int = 1) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, float | int) and value == value else "-"


def _statuses(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} x{n}" for status, n in sorted(counts.items())) or "-"


def report(out: dict[str, Any]) -> str:
    lines = [
        f"model: {out['model']}",
        f"gateway: {out['gateway']['root']} at {out['gateway']['commit']}; "
        f"knows --max-image-pixels: {out['gateway']['knows_max_image_pixels']}; "
        f"extra args: {' '.join(out['gateway']['args']) or 'none'}",
        f"machine: {out['machine']['nproc']} CPUs ({out['machine']['cpu_model']}), "
        f"{out['machine']['memory_gb']} GB; {out['date']}",
    ]
    if "latency" in out:
        latency = out["latency"]
        lines += [
            "",
            f"Attack images (pixel limit {latency['pixel_limit']:,}; decoded in this process "
            "with Pillow, median of 3; the slowest is used):",
            "| variant | side | PNG bytes | decode ms | decode+convert+resize ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for c in latency["candidates"]:
            lines.append(
                f"| {c['variant']} | {c['side']} | {c['png_bytes']:,} | {_f(c['decode_ms'])} | "
                f"{_f(c['decode_convert_resize_ms'])} |"
            )
        above = latency["above_limit_image"]
        lines.append(
            f"| {above['variant']} (above limit) | {above['side']} | {above['png_bytes']:,} | "
            f"{_f(above['decode_ms'])} | {_f(above['decode_convert_resize_ms'])} |"
        )
        lines += [
            "",
            f"Part 1: normal REST JSON :predict, wrk -t1 -c{latency['concurrency']}, "
            f"{latency['duration_s']} s per phase; attackers "
            + (
                f"paced to {latency['attack_rate']:g} requests/s in all"
                if latency.get("attack_rate")
                else "as fast as answers come back"
            ),
            "| phase | requests/s | p50 ms | p90 ms | p99 ms | max ms | errors | gateway CPU % "
            "| wrk CPU % | attackers CPU % |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in latency["phases"]:
            if "error" in p:
                lines.append(f"| {p['phase']} | {p['error']} |")
                continue
            errors = p["non_2xx"] + sum(p["socket_errors"].values())
            lines.append(
                f"| {p['phase']} | {_f(p['requests_per_s'], 0)} | {_f(p['p50_ms'], 2)} | "
                f"{_f(p['p90_ms'], 2)} | {_f(p['p99_ms'], 2)} | {_f(p['max_ms'], 1)} | {errors} | "
                f"{_f(p['gateway_cpu_percent'], 0)} | {_f(p['wrk_cpu_percent'], 0)} | "
                f"{_f(p['this_process_cpu_percent'], 0)} |"
            )
        lines += [
            "",
            "| attack | bytes | requests | answered | statuses | answered/s | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---|---:|---:|---:|",
        ]
        for p in latency["phases"]:
            if a := p.get("attack"):
                lines.append(
                    f"| {a['what']} | {a['bytes']:,} | {a['requests']} | {a['answered']} | "
                    f"{_statuses(a['statuses'])} | {_f(a['answered_per_s'], 1)} | "
                    f"{_f(a['p50_ms'])} | {_f(a['p99_ms'])} |"
                )
        for p in latency["phases"]:
            for status, text in (p.get("attack") or {}).get("examples", {}).items():
                if not status.startswith("2"):
                    lines.append(f"- {p['attack']['what']}: answer {status}: {text}")
        lines.append("")
        for key, label in (
            ("p99_ratio_busy_loop", "no attack, a nice-19 busy loop: the machine's floor"),
            ("p99_ratio_admitted", "largest admitted image"),
            ("p99_ratio_above_limit", "image above the limit"),
            ("p99_ratio_json", "the largest JSON batch admitted"),
            ("p99_ratio_batch", "the largest batch, V2 binary"),
        ):
            ratio, spread = latency.get(key), latency.get(key + "_range") or [None, None]
            verdict = "met" if ratio is not None and ratio <= P99_GOAL else "missed"
            goal = "" if key == "p99_ratio_busy_loop" else f"; goal <= {P99_GOAL:g}x: {verdict}"
            lines.append(
                f"- p99 ({label}) / mean unloaded p99: {_f(ratio, 2)}x "
                f"({_f(spread[0], 2)}x to {_f(spread[1], 2)}x against either unloaded run{goal})"
            )
        for key, label in (
            ("p50_ratio_png_chunks", "one attacker, PNG of inflating chunks"),
            ("p50_ratio_jpeg_fill", "one attacker, JPEG of fill bytes"),
        ):
            ratio, spread = latency.get(key), latency.get(key + "_range") or [None, None]
            verdict = "met" if ratio is not None and ratio <= P50_GOAL else "missed"
            lines.append(
                f"- p50 ({label}) / mean unloaded p50: {_f(ratio, 2)}x "
                f"({_f(spread[0], 2)}x to {_f(spread[1], 2)}x against either unloaded run; "
                f"goal <= {P50_GOAL:g}x: {verdict}); / p50 under one client of 64 bytes that "
                f"are no image: {_f(latency.get(key + '_over_floor'), 2)}x"
            )
        if (drift := latency.get("unloaded_p99_drift")) is not None:
            lines.append(
                f"- unloaded p99, second run / first: {drift:.2f}x (noise of the baseline)"
            )
    if "memory" in out:
        m = out["memory"]
        lines += [
            "",
            f"Part 2: {m['requests_sent']} of {m['requests_planned']} hostile gRPC Predicts "
            f"sent one at a time, {m['order']} (timeout {m['timeout_s']:g} s each)",
            "| hostile request | sent | statuses | p50 ms | max ms |",
            "|---|---:|---|---:|---:|",
        ]
        for k in m["by_kind"]:
            lines.append(
                f"| {k['kind']} | {k['sent']} | {_statuses(k['statuses'])} | "
                f"{_f(k['p50_ms'], 2)} | {_f(k['max_ms'], 1)} |"
            )
        growth = m.get("rss_growth_mb_after_pause")
        verdict = "met" if growth is not None and growth <= RSS_GOAL_MB else "missed"
        lines += [
            "",
            f"- RSS MB: after start {_f(m['rss_mb_after_start'])}, after warmup "
            f"{_f(m['rss_mb_after_warmup'])}, after the hostile requests "
            f"{_f(m['rss_mb_after_hostile'])} ({_f(m['rss_growth_mb_after_hostile'])} MB), "
            f"after {m['pause_s']:g} s more {_f(m['rss_mb_after_pause'])} "
            f"({_f(growth)} MB; goal within {RSS_GOAL_MB:g} MB: {verdict})",
            f"- peak RSS (VmHWM) MB: {_f(m['peak_rss_mb_after_warmup'])} after warmup, "
            f"{_f(m['peak_rss_mb'])} at the end",
            "- INTERNAL/UNKNOWN answers: "
            + (
                "; ".join(f"{kind}: {_statuses(c)}" for kind, c in m["internal_or_unknown"].items())
                or "none"
            ),
            f"- gateway alive afterwards: {m['gateway_alive']}"
            + ("" if m["gateway_alive"] else f" (exit code {m['gateway_exit_code']})")
            + f"; /v2/health/ready: {m['health_after']}; normal Predicts OK: "
            f"{m['normal_predicts_ok_after']}; ERROR lines in its log: {m['gateway_log_errors']}",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk phase (whole)")
    parser.add_argument("--json", type=Path, help="also write every number as JSON here")
    parser.add_argument(
        "--gateway-root",
        type=Path,
        default=ROOT,
        help="checkout to run the gateway from (cwd and PYTHONPATH)",
    )
    parser.add_argument(
        "--gateway-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="raw gateway argument, repeatable: --gateway-arg=--max-image-pixels=1000000",
    )
    parser.add_argument("--concurrency", type=int, default=4, help="wrk connections (normal load)")
    parser.add_argument("--attackers", type=int, default=2, help="attacker threads")
    parser.add_argument(
        "--attack-rate",
        type=float,
        default=0.0,
        help="attack requests per second in all, at most (0 = as fast as answers come back); "
        "compare two gateways at one rate",
    )
    parser.add_argument(
        "--attack-image-side",
        type=int,
        help="side of the admitted attack image (default: from the pixel limit)",
    )
    parser.add_argument("--hostile-requests", type=int, default=1000)
    parser.add_argument("--hostile-timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument(
        "--hostile-budget",
        type=float,
        default=300.0,
        help="stop sending hostile requests after this many seconds",
    )
    parser.add_argument(
        "--hostile-order",
        choices=("mixed", "grouped"),
        default="mixed",
        help="kinds in turn, or each kind's share in a row (what one kind retains)",
    )
    parser.add_argument("--pause", type=float, default=3.0, help="seconds before the last RSS")
    parser.add_argument("--only", choices=("latency", "memory"), help="run one part")
    args = parser.parse_args()
    root = args.gateway_root.resolve()
    if not (root / "serving" / "__main__.py").exists():
        sys.exit(f"{root} has no serving/__main__.py")
    if args.only != "memory" and shutil.which("wrk") is None:
        sys.exit("wrk not found (Debian package 'wrk'; `make setup` installs it as root)")
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # measure any --attack-image-side here; the gateway decides
    out: dict[str, Any] = {
        "command": shlex.join(sys.orig_argv),
        "cwd": os.getcwd(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "gateway": {
            "root": str(root),
            "commit": gateway_commit(root),
            "args": args.gateway_arg,
            "knows_max_image_pixels": gateway_knows(root, "--max-image-pixels"),
        },
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        repo, _, out["model"] = prepare_repository(work)
        input_name, height, width, channels = model_input(repo)
        shape = (height, width, channels)
        print(f"model: {out['model']}; input {input_name} {height}x{width}x{channels}", flush=True)
        if args.only != "memory":
            limit, chosen, above, candidates = attack_images(
                args.gateway_arg, shape, args.attack_image_side
            )
            print(f"part 1: {args.duration} s x 10 phases", flush=True)
            rows = int(option_value(args.gateway_arg, "--max-request-batch") or DEFAULT_MAX_BATCH)
            latency = latency_part(
                root,
                repo,
                args.gateway_arg,
                (chosen, above),
                (json_batch_attack(shape, rows), binary_batch_attack(input_name, shape, rows)),
                args.concurrency,
                args.attackers,
                args.duration,
                work,
                args.attack_rate,
            )
            add_ratios(latency)
            latency.update(
                {
                    "pixel_limit": limit,
                    "concurrency": args.concurrency,
                    "attackers": args.attackers,
                    "attack_rate": args.attack_rate,
                    "duration_s": args.duration,
                    "candidates": [c.summary() for c in candidates],
                    "chosen_image": chosen.summary(),
                    "above_limit_image": above.summary(),
                    "goal_p99_ratio": P99_GOAL,
                    "goal_p50_ratio_one_attacker": P50_GOAL,
                }
            )
            out["latency"] = latency
        if args.only != "latency":
            print(f"part 2: {args.hostile_requests} hostile gRPC Predicts", flush=True)
            out["memory"] = memory_part(
                root,
                repo,
                args.gateway_arg,
                input_name,
                shape,
                args.hostile_requests,
                args.hostile_timeout,
                args.hostile_budget,
                args.pause,
                args.hostile_order == "grouped",
            )
            out["memory"]["goal_rss_growth_mb"] = RSS_GOAL_MB
    print()
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(finite(out), indent=2))


if __name__ == "__main__":
    main()
