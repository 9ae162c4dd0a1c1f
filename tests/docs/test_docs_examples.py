"""The README's and docs/' commands run as written, so they cannot rot.

Every fenced shell block in README.md and docs/*.md says what it is in its info string, after the
language (GitHub shows only the language):

- ``bash example``: quick commands; each one runs here and must exit 0 (curl with
  ``--fail-with-body``, so an HTTP error fails it), against a real gateway on 127.0.0.1;
- ``bash serve``: commands that start the gateway; each one starts here, must become ready and
  must stop cleanly on SIGTERM;
- ``bash long``, ``bash needs-gpu``, ``bash needs-docker``: not run (training, long load tests,
  a device or a container engine); docs/gpu.md is about the GPU, so its blocks need one.

``python example`` blocks run too. The commands run in a temporary directory that looks like the
repository root after `make demo`: ``.venv`` and ``examples/`` linked from the checkout, and a
``model_repository/`` holding a tiny LeNet-shaped model called ``lenet`` (versions 1 and 2, labels
stable and canary), so nothing touches the checkout's own working folders. The gateway the
examples call is started with the README's own serve command; the ports in the examples (8501 and
8500 as TF Serving's, 9501 and 9500 in docs/benchmarks.md) are rewritten to its free ones.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from benchmarks.servers import free_port
from tests.tiny_models import lenet_like, metadata_for, write_models_config, write_version

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKS = {"example", "serve", "long", "needs-gpu", "needs-docker"}
#: pages whose every command needs what their subject needs
PAGE_MARKS = {"gpu.md": "needs-gpu"}
SHELLS = {"bash", "sh", "shell", "console"}
README_LINES = 350


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    marks: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    found, lines = [], page.read_text().splitlines()
    index = 0
    while index < len(lines):
        match = re.match(r"^```(\S*)(.*)$", lines[index])
        if not match:
            index += 1
            continue
        start, body = index, []
        index += 1
        while index < len(lines) and not lines[index].startswith("```"):
            body.append(lines[index])
            index += 1
        words = frozenset(match.group(2).split())
        found.append(Block(page, start + 1, match.group(1), words, "\n".join(body)))
        index += 1
    return found


def commands(block: Block) -> list[tuple[int, str]]:
    """The block's commands, continuation lines joined, comment-only and blank lines left out,
    each with its line number."""
    result: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for offset, line in enumerate(block.text.splitlines()):
        if not pending:
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            first = block.line + 1 + offset
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        result.append((first, " ".join(part.strip() for part in pending)))
        pending = []
    return result


ALL_BLOCKS = [block for page in PAGES for block in blocks(page)]


def marked(kind: str) -> list[tuple[str, str]]:
    """(where, command) for every command in the blocks marked ``kind``."""
    return [
        (f"{block.page.relative_to(ROOT)}:{line}", command)
        for block in ALL_BLOCKS
        if block.language in SHELLS and kind in block.marks
        for line, command in commands(block)
    ]


def test_every_command_block_is_run_here_or_marked() -> None:
    unmarked = [
        block.where
        for block in ALL_BLOCKS
        if block.language in SHELLS and not (block.marks & MARKS or block.page.name in PAGE_MARKS)
    ]
    assert not unmarked, (
        "shell blocks without a mark (example, serve, long, needs-gpu, needs-docker; "
        f"see this test's docstring): {unmarked}"
    )
    assert marked("example") and marked("serve")


def test_the_readme_is_a_guide_of_at_most_350_lines() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_LINES, len(lines)
    for link in re.findall(r"\]\(((?:docs|examples|benchmarks)/[^)#]+)\)", "\n".join(lines)):
        assert (ROOT / link).exists(), link


# --- the site the commands run in -----------------------------------------------------------


@dataclass
class Site:
    root: Path
    http_port: int
    grpc_port: int

    def localise(self, command: str) -> str:
        """The command as it must run here: the documented ports become the gateway's."""
        command = re.sub(r"(?:localhost|127\.0\.0\.1):[89]501\b", f"127.0.0.1:{self.http_port}", command)  # fmt: skip
        command = re.sub(r"(?:localhost|127\.0\.0\.1):[89]500\b", f"127.0.0.1:{self.grpc_port}", command)  # fmt: skip
        return re.sub(r"\bcurl -s ", "curl -sS --fail-with-body --max-time 30 ", command)


def write_site_repository(root: Path) -> None:
    for version in (1, 2):
        metadata = metadata_for("lenet", version, 10)
        metadata["class_names"] = [str(digit) for digit in range(10)]
        write_version(root, "lenet", version, lenet_like(seed=version), metadata=metadata)
    write_models_config(
        root, ["lenet"], labels={"lenet": {"stable": 1, "canary": 2}}, policies={"lenet": "all {}"}
    )


class ServeProcess:
    """A documented serve command, started in the site on free ports."""

    def __init__(self, site: Path, command: str, http_port: int, grpc_port: int) -> None:
        self.log = site / f"serve-{http_port}.log"
        self.url = f"http://127.0.0.1:{http_port}"
        full = f"exec {command} --http-port {http_port} --grpc-port {grpc_port}"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", full], cwd=site, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"exited {self.process.returncode}: {self.output()}"
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready in {timeout_s} s: {self.output()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The site, and the gateway the README's tour starts (its first serve command)."""
    root = tmp_path_factory.mktemp("site")
    (root / ".venv").symlink_to(ROOT / ".venv")
    (root / "examples").symlink_to(ROOT / "examples")
    write_site_repository(root / "model_repository")
    readme_serve = next(cmd for where, cmd in marked("serve") if where.startswith("README.md"))
    served = Site(root, free_port(), free_port())
    gateway = ServeProcess(root, readme_serve, served.http_port, served.grpc_port)
    try:
        gateway.wait_ready()
        yield served
    finally:
        gateway.stop()


EXAMPLES = marked("example")


@pytest.mark.parametrize(("where", "command"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_example_command_runs_as_written(site: Site, where: str, command: str) -> None:
    run = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {site.localise(command)}"], cwd=site.root,
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert run.returncode == 0, f"{where}: {command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


PYTHON_EXAMPLES = [
    (block.where, block.text)
    for block in ALL_BLOCKS
    if block.language == "python" and "example" in block.marks
]


@pytest.mark.parametrize(("where", "code"), PYTHON_EXAMPLES, ids=[w for w, _ in PYTHON_EXAMPLES])
def test_python_example_runs_as_written(site: Site, where: str, code: str) -> None:
    run = subprocess.run(
        [sys.executable, "-c", site.localise(code)], cwd=site.root, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, f"{where}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"


SERVES = marked("serve")


@pytest.mark.parametrize(("where", "command"), SERVES, ids=[w for w, _ in SERVES])
def test_serve_command_starts_answers_and_drains(site: Site, where: str, command: str) -> None:
    gateway = ServeProcess(site.root, command, free_port(), free_port())
    try:
        gateway.wait_ready()
        answer = httpx.get(f"{gateway.url}/v1/models/lenet", timeout=10)
        assert answer.status_code == 200, answer.text
    finally:
        code = gateway.stop()
    assert code == 0, f"{where}: exit {code}\n{gateway.output()}"


def test_examples_folder_is_what_its_script_writes() -> None:
    """examples/ holds real MNIST test digits and bodies made from them, by its own script."""
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import make_examples
    finally:
        sys.path.remove(str(ROOT / "examples"))
    from training.data import load_dataset

    dataset = load_dataset("mnist")
    expected = make_examples.files(dataset.x_test, dataset.y_test)
    for name, data in expected.items():
        assert (ROOT / "examples" / name).read_bytes() == data, f"examples/{name} is stale"
    documented = (ROOT / "examples" / "README.md").read_text()
    for name in expected:
        assert name in documented, f"examples/README.md does not mention {name}"
