"""Prometheus exposition text (a gateway's ``/metrics``) read through prometheus_client's own
parser, so a test checks what a scraper would see, not what a regular expression happens to match.

Names are sample names as exposed: ``serving_requests_total``, ``serving_batch_size_count``,
``serving_queue_depth``. Kept apart from ``tests.serving.serving_harness`` so that tests which only
render metrics (tests/deploy) need not import the gateway.
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def metric_samples(text: str) -> list[Sample]:
    """Every sample in the exposition, of every family."""
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def metric_value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (others are summed
    over); 0.0 when none matches, as a labelled series only appears once it has been counted."""
    matching = (
        sample.value
        for sample in metric_samples(text)
        if sample.name == name and labels.items() <= sample.labels.items()
    )
    return sum(matching, 0.0)
