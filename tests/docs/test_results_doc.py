"""benchmarks/RESULTS.md answers "how fast is it?" at a glance, and every figure can be rerun."""

from __future__ import annotations

import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "RESULTS.md"
QUESTIONS = ("peers", "in-process ceiling", "protocol", "GPU", "quality", "Hostile", "Overload")


def test_results_open_with_where_we_stand() -> None:
    text = RESULTS.read_text()
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[0] == "Where we stand", sections[:3]
    tables = text.split("## Where we stand", 1)[1].split("\n## ", 1)[0]
    headings = re.findall(r"^### (.+)$", tables, flags=re.M)
    for question in QUESTIONS:
        assert any(question.lower() in heading.lower() for heading in headings), question
    # every row of every table there names its date, machine, commit and command
    for header in re.findall(r"^\| figure .*$", tables, flags=re.M):
        assert header.startswith("| figure | date | machine | commit | command"), header


def test_no_figure_cites_a_script_outside_the_repository() -> None:
    cited = re.findall(r"/tmp/[\w./-]+\.(?:py|sh)\b", RESULTS.read_text())
    assert not cited, cited
