"""Tests of the gateway (``serving``); ``serving_harness`` runs real gateways for them and for
the client and benchmark tests."""
