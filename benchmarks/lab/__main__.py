"""``python -m benchmarks.lab``: which probe answers which question."""

from benchmarks.lab import index

print(index())
