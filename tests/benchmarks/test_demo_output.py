"""`make demo`'s terminal: TensorFlow's C++ log lines go to the log file only, the rest passes."""

from __future__ import annotations

import io

import pytest

from benchmarks.demo import CPP_LOG_LINE, WHAT_NEXT, _filter_stderr

# Lines TensorFlow 2.21 printed during `make demo` on the CPU (TF_CPP_MIN_LOG_LEVEL=2 set).
CPP_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
    "I0000 00:00:1796583721.019153    4478 port.cc:153] oneDNN custom operations are on.\n",
    "I0000 00:00:1796583721.019474    4478 cudart_stub.cc:31] Could not find cuda drivers\n",
    "E0000 00:00:1796583723.420490    4478 cuda_platform.cc:52] failed call to cuInit\n",
    "W1206 19:02:10.914060    4478 node_def_util.cc:682] NodeDef mentions attribute\n",
]
OWN_LINES = [
    "422/422 - 8s - 18ms/step - accuracy: 0.9491 - loss: 0.1646\n",
    "UserWarning: something the user should see\n",
    "Traceback (most recent call last):\n",
]


def test_cpp_log_lines_are_kept_out_of_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert all(CPP_LOG_LINE.match(line) for line in CPP_LINES)
    assert not any(CPP_LOG_LINE.match(line) for line in OWN_LINES)
    log = io.StringIO()
    _filter_stderr(io.StringIO("".join(CPP_LINES + OWN_LINES)), log)
    assert capsys.readouterr().err == "".join(OWN_LINES)
    assert log.getvalue() == "".join(CPP_LINES + OWN_LINES)  # nothing lost


def test_the_demo_ends_with_what_next() -> None:
    text = WHAT_NEXT.format(repository="model_repository", out="reports/demo")
    assert "After the demo" in text
    for command in ("-m serving", "-m clients predict", "curl", "-m benchmarks run"):
        assert command in text
