"""The locustfile must not pull in tensorflow, requests or urllib3 itself (gevent's
monkey-patching breaks on them: docs/ARCHITECTURE.md, known traps)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from benchmarks.servers import REPO_ROOT, child_env

FORBIDDEN = {"tensorflow", "requests", "urllib3", "keras", "tf2onnx"}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_locustfile_source_has_no_forbidden_imports() -> None:
    assert not imported_roots(REPO_ROOT / "benchmarks" / "locustfile.py") & FORBIDDEN


def test_loading_the_locustfile_imports_no_tensorflow() -> None:
    # As Locust does it: locust first (it patches), then the locustfile; TensorFlow must not follow.
    code = (
        "import locust, sys\n"
        "import benchmarks.locustfile\n"
        "bad = sorted(m for m in ('tensorflow', 'keras', 'tf2onnx') if m in sys.modules)\n"
        "print('forbidden:', bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
