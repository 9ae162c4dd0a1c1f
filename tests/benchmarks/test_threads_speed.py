"""The threads benchmark's request is one the real gateway answers."""

from __future__ import annotations

from pathlib import Path

import httpx

from benchmarks.lab import gateway_speed, threads_speed


def test_v2_one_image_body_is_answered_by_the_gateway(tmp_path: Path) -> None:
    repo, model, _ = gateway_speed.prepare_repository(tmp_path)
    body, header_length = threads_speed.v2_one_image_body(gateway_speed.model_file(repo))
    server = gateway_speed.start_gateway(repo, [])
    try:
        reply = httpx.post(
            server.url + gateway_speed.INFER_PATH.format(model=model),
            content=body,
            headers={
                "content-type": "application/octet-stream",
                "inference-header-content-length": str(header_length),
            },
            timeout=30,
        )
    finally:
        server.stop()
    assert reply.status_code == 200, reply.text
    header_size = int(reply.headers["inference-header-content-length"])
    # One image in, one row of class probabilities (float32) out, as binary data.
    assert len(reply.content) - header_size == 10 * 4
