"""Fixtures for gateway tests: tiny deterministic repositories and running gateways."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serving.serving_harness import RunningGateway, gateway_settings
from tests.tiny_models import (
    slow_classifier,
    write_labelled_pair,
    write_version,
)

MODEL = "tiny"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` versions 1 and 2 (different weights), labels stable=1 and canary=2, all served."""
    return write_labelled_pair(tmp_path_factory.mktemp("repo"), MODEL)


@pytest.fixture(scope="module")
def slow_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``slow`` version 1: a model that computes for a while per request (overload, deadlines)."""
    root = tmp_path_factory.mktemp("slow")
    write_version(root, "slow", 1, slow_classifier(repeats=12))
    return root


@pytest.fixture(scope="module")
def gateway(tiny_repo: Path) -> Iterator[RunningGateway]:
    """One running gateway over ``tiny_repo`` shared by a test module."""
    running = RunningGateway(gateway_settings(tiny_repo)).start()
    yield running
    running.stop()


@pytest.fixture
def start_gateway() -> Iterator[Callable[..., RunningGateway]]:
    """Factory: ``start_gateway(repo, **settings)``; every gateway is stopped at teardown."""
    started: list[RunningGateway] = []

    def start(repository: Path, **overrides: Any) -> RunningGateway:
        running = RunningGateway(gateway_settings(repository, **overrides)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
