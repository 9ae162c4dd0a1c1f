"""Every test keeps its hands off the checkout's working folders.

`make demo` fills ``model_repository/``, ``runs/`` and ``reports/`` in the checkout, and CI runs
`make test` right after it in the same clone (`.ci/run`), as a user following the README does.
A test that wrote there would change the user's model or reports, and one that read from there
would pass or fail by what the demo left behind; tests use temporary directories instead (the
lab's probes, which measure a trained LeNet when the checkout has one, are told not to look). The
fixture below fails the test during which any of those folders changed (a file or folder
created, removed or rewritten), naming what changed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKING_FOLDERS = ("model_repository", "runs", "reports")

# The lab's probes measure the checkout's trained LeNet when there is one; under test they use the
# LeNet-like model of tests/tiny_models.py whatever the demo left (this process and its children).
os.environ["BENCHMARKS_LENET_DIR"] = ""


def _snapshot() -> dict[str, tuple[int, int]]:
    """(mtime in ns, size) of every file and folder under the working folders, by path."""
    seen: dict[str, tuple[int, int]] = {}
    for name in WORKING_FOLDERS:
        top = ROOT / name
        if not top.exists():
            continue
        for folder, _dirs, files in os.walk(top):
            for entry in (folder, *(os.path.join(folder, f) for f in files)):
                try:
                    stat = os.stat(entry)
                except FileNotFoundError:
                    continue
                seen[os.path.relpath(entry, ROOT)] = (stat.st_mtime_ns, stat.st_size)
    return seen


@pytest.fixture(autouse=True)
def _checkout_working_folders_untouched() -> Iterator[None]:
    before = _snapshot()
    yield
    after = _snapshot()
    changed = sorted(
        path for path in before.keys() | after.keys() if before.get(path) != after.get(path)
    )
    assert not changed, (
        "this test changed the checkout's working folders (use tmp_path): "
        + ", ".join(changed[:10])
        + (f" and {len(changed) - 10} more" if len(changed) > 10 else "")
    )
