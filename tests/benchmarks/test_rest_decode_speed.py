"""The REST decode benchmark runs, takes the simdjson path, and gets the general path's answers."""

from __future__ import annotations

import sys

import pytest

from benchmarks.lab import rest_decode_speed


def test_rest_decode_speed_prints_both_paths(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["rest_decode_speed", "--repeat", "1"])
    rest_decode_speed.main()  # asserts inside: fast path taken, same array both ways
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 4  # 1 and 32 images, uint8 and float32
    for row in rows:
        fast, general = (float(cell) for cell in row.strip("| ").split(" | ")[3:5])
        assert fast > 0 and general > 0
