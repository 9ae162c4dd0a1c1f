"""Fixtures for the client tests: real gateways on 127.0.0.1 (see ``tests.clients.gateways``),
each started once for the package and stopped after its last test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clients.gateways import API_KEY, BROKEN, MODEL, SLOW
from tests.serving.serving_harness import RunningGateway, gateway_settings
from tests.tiny_models import linear_classifier, slow_classifier, write_labelled_pair, write_version


def _running(repository: Path, **settings: Any) -> Iterator[RunningGateway]:
    running = RunningGateway(gateway_settings(repository, **settings)).start()
    yield running
    running.stop()


@pytest.fixture(scope="package")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` versions 1 and 2 (different weights), labels stable=1 and canary=2."""
    return write_labelled_pair(tmp_path_factory.mktemp("client-repo"), MODEL)


@pytest.fixture(scope="package")
def slow_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``slow`` version 1: a tenth of a second or more of compute per image."""
    root = tmp_path_factory.mktemp("client-slow")
    write_version(root, SLOW, 1, slow_classifier(repeats=12))
    return root


@pytest.fixture(scope="package")
def gateway(repository: Path) -> Iterator[RunningGateway]:
    """The gateway serving ``repository`` (the harness's test settings, nothing else)."""
    yield from _running(repository)


@pytest.fixture(scope="package")
def busy_gateway(slow_repository: Path) -> Iterator[RunningGateway]:
    """``slow`` one request at a time (no batching) with room for one more in its queue, and
    every arrival beyond it refused: ``gateways.full_queue`` makes it refuse at will."""
    yield from _running(slow_repository, batching=False, max_queue_size=1, refusal_share=0)


@pytest.fixture(scope="package")
def troubled_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """Every predict fails, for real: ``slow`` passes its 1 ms deadline before it is computed
    (DEADLINE_EXCEEDED), and ``broken``'s only version failed to load (UNAVAILABLE)."""
    root = tmp_path_factory.mktemp("client-troubled")
    write_version(root, SLOW, 1, slow_classifier(repeats=12))
    broken = write_version(root, BROKEN, 1, linear_classifier())
    (broken / "metadata.json").write_text('{"class_names": [')  # fails to load
    yield from _running(root, request_timeout_s=0.001)


@pytest.fixture(scope="package")
def guarded_gateway(repository: Path) -> Iterator[RunningGateway]:
    """``repository`` behind the API key ``gateways.API_KEY``."""
    yield from _running(repository, api_keys=[API_KEY])
