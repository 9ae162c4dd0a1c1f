"""benchmarks/ holds the user's tools; the engineers' probes live in benchmarks/lab/, indexed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.lab import PROBES, TOP_LEVEL, index

ROOT = Path(__file__).resolve().parents[2]

#: the user's tools (python -m benchmarks run|sweep|rate|ceiling|accuracy, make demo) and the
#: modules they are made of
USER_FACING = {
    "__init__", "__main__", "run", "sweep", "rate", "ceiling", "accuracy", "demo",
    "locustfile", "openloop", "prepare", "report", "reference", "servers", "answers", "metrics",
}  # fmt: skip


def test_every_probe_is_in_the_index_and_the_top_level_holds_only_user_tools() -> None:
    lab = {p.stem for p in (ROOT / "benchmarks" / "lab").glob("*.py")} - {"__init__", "__main__"}
    assert lab == set(PROBES)
    top = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert top - USER_FACING <= set(TOP_LEVEL), "a new probe belongs in benchmarks/lab/"


def test_help_names_the_user_commands_and_the_lab() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    for command in ("run", "sweep", "rate", "ceiling", "accuracy"):
        assert command in shown
    for name in PROBES:
        assert f"python -m benchmarks.lab.{name}" in shown
    for name in TOP_LEVEL:
        assert f"python -m benchmarks.{name}" in shown
    lab = subprocess.run(
        [sys.executable, "-m", "benchmarks.lab"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    assert lab.strip() == index()
