"""The import rules of docs/ARCHITECTURE.md, each proved in a fresh interpreter: importing every
module of ``serving/`` or ``clients/`` loads no TensorFlow (nor Keras), and ``clients/`` loads
nothing else from this repository."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Imports every module of one package and prints which top-level packages ended up loaded.
# ``__main__`` modules run their command when imported, so they are probed by what they import.
PROBE = """
import ast, importlib, importlib.util, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    if module.name.endswith(".__main__"):
        spec = importlib.util.find_spec(module.name)
        tree = ast.parse(open(spec.origin).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                importlib.import_module(node.module)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
        continue
    importlib.import_module(module.name)
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""

FORBIDDEN = {
    "serving": {"tensorflow", "keras", "tf_keras", "tf2onnx", "training", "benchmarks"},
    "clients": {"tensorflow", "keras", "tf_keras", "tf2onnx", "training", "benchmarks", "serving"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_never_imports(package: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, package],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert package in loaded  # the probe did import the package
    assert not loaded & FORBIDDEN[package], sorted(loaded & FORBIDDEN[package])
