"""The test suite, a package so that shared helpers import by their full name from any test
(``tests.tiny_models``, ``tests.serving.serving_harness``); pytest runs it from the repository
root, which ``pythonpath`` in pyproject.toml puts on the import path."""
