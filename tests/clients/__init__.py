"""Tests of the client library (``clients``), against the real gateway."""
