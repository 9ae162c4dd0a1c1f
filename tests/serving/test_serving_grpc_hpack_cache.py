"""The gRPC transport's cache of decoded header blocks (``GrpcConnection._decode``) answers what
``hpack`` itself decodes, block for block, whatever the dynamic table went through: entries
added and evicted, size updates, never-indexed fields, blocks repeated before and after a change
(the case a cache gets wrong). Differential against a second, uncached ``hpack.Decoder``."""

from __future__ import annotations

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from serving.grpc.transport import GrpcConnection, GrpcLimits, GrpcServer

POOL = [
    [(":method", "POST"), (":path", "/inference.GRPCInferenceService/ModelInfer"),
     ("content-type", "application/grpc"), ("te", "trailers")],
    [(":method", "POST"), (":path", "/tensorflow.serving.PredictionService/Predict"),
     ("content-type", "application/grpc"), ("x-request-id", "abc")],
    [(":method", "POST"), (":path", "/x/y"), ("user-agent", "grpc-python/1.85"),
     ("grpc-timeout", "100m")],
    [(":method", "POST"), ("authorization", "Bearer k" * 20), ("x-api-key", "k")],
]  # fmt: skip


def _decoded(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes(name), bytes(value)) for name, value in headers]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(POOL) - 1),
            st.sampled_from([None, 0, 64, 256, 4096]),  # a table size update before the block
            st.booleans(),  # the last field never indexed
            st.text("ab", max_size=3),  # a varying value: new entries, evictions
        ),
        max_size=25,
    )
)
def test_cached_decoding_equals_hpack(steps: list[tuple[int, int | None, bool, str]]) -> None:
    connection = GrpcConnection(GrpcServer({}, {}, GrpcLimits()))
    reference = hpack.Decoder(max_header_list_size=GrpcLimits().max_header_bytes)
    encoder = hpack.Encoder()
    for pick, size, sensitive, extra in steps:
        if size is not None:
            encoder.header_table_size = size
        fields: list[tuple[str, str]] = list(POOL[pick])
        if extra:
            fields.append(("x-extra", extra))
        if sensitive:
            name, value = fields[-1]
            fields[-1] = hpack.NeverIndexedHeaderTuple(name, value)
        block = encoder.encode(fields)
        for _ in range(2):  # each block twice: the second may come from the cache
            expected = reference.decode(block, raw=True)
            assert _decoded(connection._decode(block)) == _decoded(expected)
            block = encoder.encode(fields)


def test_a_repeated_indexed_block_is_served_from_the_cache() -> None:
    """The reason for the cache: a client's second and later identical calls are one lookup."""
    connection = GrpcConnection(GrpcServer({}, {}, GrpcLimits()))
    encoder = hpack.Encoder()
    first = encoder.encode(POOL[0])  # adds entries to the table: not kept
    connection._decode(first)
    assert not connection.header_blocks
    second = encoder.encode(POOL[0])  # references only
    assert len(second) < len(first)
    headers = connection._decode(second)
    assert connection.header_blocks[second][2] is headers
    assert connection._decode(second) is headers
