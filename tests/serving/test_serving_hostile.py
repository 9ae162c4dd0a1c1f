"""Hostile input, as an outside tester would send it: every malformed, oversized or lying request
gets its documented 4xx and a message naming the problem, over TF Serving REST, KServe V2 (JSON
and binary), the image endpoint (raw and multipart), TF Serving gRPC and KServe V2 gRPC; none allocates what it merely
claims; and afterwards the gateway is healthy, its memory within 50 MB of where it started and
its metrics free of the bogus model names it was sent.

The gateway is a real ``python -m serving`` process (its memory is measured from /proc), with
small limits so the oversized cases stay cheap: 1 MiB bodies, batches of 8.

Size: a catalogue of hostile inputs, one table per input path, each row a request and the
refusal it must get.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from PIL import Image

from clients import v2_grpc, wire
from tests.metrics_text import metric_samples
from tests.serving.serving_harness import GatewayProcess, predict_call
from tests.tiny_models import any_size_classifier, lenet_like, write_models_config, write_version

MODEL = "lenet"
ANY_SIZE = "anysize"
MAX_BODY = 1024 * 1024
MAX_BATCH = 8
PREDICT = f"/v1/models/{MODEL}:predict"
INFER = f"/v2/models/{MODEL}/infer"
CLASSIFY = f"/v1/models/{MODEL}:classify_image"
RSS_SLACK_MB = 50


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("hostile")
    write_version(root, MODEL, 1, lenet_like())
    write_version(root, ANY_SIZE, 1, any_size_classifier())
    write_models_config(root, [MODEL, ANY_SIZE])
    running = GatewayProcess(
        root,
        "--max-body-bytes", str(MAX_BODY),
        "--max-request-batch", str(MAX_BATCH),
    )  # fmt: skip
    try:
        send_good_requests(running)  # warm every path once, then take the baseline
        running.baseline_rss_mb = running.rss_mb()  # type: ignore[attr-defined]
        yield running
    finally:  # also when the warm-up fails: never leave the gateway process behind
        running.stop()


def send_good_requests(gateway: GatewayProcess) -> None:
    """One well-formed request per protocol; each must succeed."""
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.post(PREDICT, content=GOOD_ROW).status_code == 200
        assert http.post(INFER, content=v2_body()).status_code == 200
        binary = v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784))
        assert http.post(INFER, **binary).status_code == 200
        assert http.post(CLASSIFY, content=SMALL_PNG).status_code == 200
        assert http.post(CLASSIFY, content=progressive_jpeg()).status_code == 200
        assert http.post(CLASSIFY, content=with_empty_segments(SMALL_PNG, 50)).status_code == 200
        assert http.post(CLASSIFY, content=with_empty_segments(SMALL_JPEG, 50)).status_code == 200
        assert http.post(CLASSIFY, **multipart([("file", "a.png", SMALL_PNG)])).status_code == 200
        b64_body = json.dumps({"instances": [{"b64": b64(SMALL_PNG)}]}).encode()
        assert http.post(PREDICT, content=b64_body).status_code == 200
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        request = wire.PredictRequest.FromString(predict_request(("image", GOOD_TENSOR)))
        assert "probabilities" in predict_call(channel)(request, timeout=10).outputs
        infer = channel.unary_unary(v2_grpc.MODEL_INFER_METHOD)
        answer = v2_grpc.ModelInferResponse.FromString(infer(infer_request(), timeout=10))
        assert [len(raw) for raw in answer.raw_output_contents] == [40]


# --- bodies -------------------------------------------------------------------------------------
def image(value: int = 0) -> list[Any]:
    return [[[value]] * 28] * 28


def tf_body(instances: Any) -> bytes:
    return json.dumps({"instances": instances}).encode()


def deep(levels: int, key: str = "instances") -> bytes:
    return f'{{"{key}": '.encode() + b"[" * levels + b"1" + b"]" * levels + b"}"


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, idat: bytes | None = b"") -> bytes:
    """A PNG header that declares ``width`` x ``height`` grayscale pixels, with ``idat`` as its
    (usually far too short) compressed data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = png_chunk(b"IHDR", header)
    if idat is not None:
        chunks += png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + chunks + png_chunk(b"IEND", b"")


def solid_png(side: int) -> bytes:
    """A real, valid, highly compressible ``side`` x ``side`` grayscale PNG."""
    out = io.BytesIO()
    Image.new("L", (side, side), 128).save(out, format="PNG")
    return out.getvalue()


def jpeg_declaring(width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) declares ``width`` x ``height``, with no scan data."""
    out = io.BytesIO()
    Image.new("L", (8, 8), 0).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    end_of_sof = sof + 2 + struct.unpack_from(">H", data, sof + 2)[0]
    return bytes(data[:end_of_sof]) + b"\xff\xd9"


def progressive_jpeg(side: int = 64, repeat_last_scan: int = 0) -> bytes:
    """A real progressive grayscale JPEG; with ``repeat_last_scan``, its last scan (header and
    entropy-coded data) is repeated that many more times before the end: a few bytes each, and
    each a full pass of the decoder over the image."""
    out = io.BytesIO()
    pixels = np.random.default_rng(1).integers(0, 256, (side, side), np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG", progressive=True, quality=90)
    data = out.getvalue()
    last_scan, end = data.rindex(b"\xff\xda"), data.rindex(b"\xff\xd9")
    return data[:end] + data[last_scan:end] * repeat_last_scan + data[end:]


def with_empty_segments(image: bytes, count: int) -> bytes:
    """``image`` with ``count`` empty segments after its signature: PNG ancillary chunks (12
    bytes each) or JPEG comments (4 bytes each), each parsed in Python by Pillow."""
    if image.startswith(b"\x89PNG"):
        header_end = 8 + 25  # the signature and IHDR
        return image[:header_end] + png_chunk(b"prVt", b"") * count + image[header_end:]
    return image[:2] + b"\xff\xfe\x00\x02" * count + image[2:]


def with_fill_bytes(jpeg: bytes, count: int) -> bytes:
    """``jpeg`` with ``count`` fill bytes (0xFF) before its first marker after SOI: legal, and
    walked a byte at a time by Pillow in Python."""
    return jpeg[:2] + b"\xff" * count + jpeg[2:]


SMALL_PNG = solid_png(28)
_small_jpeg = io.BytesIO()
Image.new("L", (28, 28), 90).save(_small_jpeg, format="JPEG")
SMALL_JPEG = _small_jpeg.getvalue()
_noise = io.BytesIO()
Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8)).save(_noise, "PNG")
NOISE_PNG = _noise.getvalue()  # its IDAT is most of the file: cutting it in half truncates data


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v2_tensor(**fields: Any) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8"}
    tensor.update(fields)
    if "data" not in fields and "parameters" not in fields:
        tensor["data"] = [0] * 784
    return {k: v for k, v in tensor.items() if v is not ...}


def v2_body(*, outputs: Any = ..., **request: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [v2_tensor()], **request}
    if outputs is not ...:
        body["outputs"] = outputs
    return json.dumps(body).encode()


def v2_binary(
    tensor: dict[str, Any], binary: bytes, header_length: str | None = None
) -> dict[str, Any]:
    header = json.dumps({"inputs": [tensor]}).encode()
    length = str(len(header)) if header_length is None else header_length
    return {"content": header + binary, "headers": {"Inference-Header-Content-Length": length}}


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "XyZ") -> dict[str, Any]:
    """A multipart/form-data body built by hand (so that it can be wrong in chosen ways)."""
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += (
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"
        )
    body += f"--{boundary}--\r\n".encode()
    return {
        "content": body,
        "headers": {"content-type": f"multipart/form-data; boundary={boundary}"},
    }


def chunked(total: int) -> Iterator[bytes]:
    """A body without Content-Length (chunked transfer), ``total`` bytes in 64 KiB chunks."""
    sent = 0
    while sent < total:
        size = min(64 * 1024, total - sent)
        sent += size
        yield b" " * size


# (case id, method, path, httpx request options, status, words the message must contain)
RestCase = tuple[str, str, str, dict[str, Any], int, str]
GOOD_ROW = tf_body([image()])
TIMEOUT = "x-request-timeout-ms"

TF_REST_CASES: list[RestCase] = [
    ("int-beyond-64-bits", "POST", PREDICT, {"content": b'{"instances": [[[[111111111111111111111111111111]]]]}'}, 400, "integers beyond 64 bits"),
    ("depth-1100", "POST", PREDICT, {"content": deep(1100)}, 400, "depth limit exceeded"),
    ("depth-100000", "POST", PREDICT, {"content": deep(100_000)}, 400, "malformed JSON"),
    ("depth-100-ragged", "POST", PREDICT, {"content": deep(100)}, 400, "expects shape"),
    ("all-true-pixels", "POST", PREDICT, {"content": tf_body([[[[True]] * 28] * 28])}, 400, "true/false are not numbers"),
    ("one-false-pixel", "POST", PREDICT, {"content": tf_body([[[[False]] + [[1]] * 27] * 28])}, 400, "true/false are not numbers"),
    ("true-in-columnar", "POST", PREDICT, {"content": json.dumps({"inputs": {"image": [[[[True]] * 28] * 28]}}).encode()}, 400, "true/false are not numbers"),
    ("true-in-named-instance", "POST", PREDICT, {"content": tf_body([{"image": [[[True]] * 28] * 28}])}, 400, "true/false are not numbers"),
    ("string-pixels", "POST", PREDICT, {"content": tf_body([[[["7"]] * 28] * 28])}, 400, "got string values"),
    ("null-pixels", "POST", PREDICT, {"content": tf_body([[[[None]] * 28] * 28])}, 400, "non-numeric"),
    ("nan-literal", "POST", PREDICT, {"content": b'{"instances": [[[[NaN]]]]}'}, 400, "malformed JSON"),
    ("infinity-literal", "POST", PREDICT, {"content": b'{"instances": [[[[Infinity]]]]}'}, 400, "malformed JSON"),
    ("float-overflow-1e400", "POST", PREDICT, {"content": tf_body([[[[0]] * 27 + [[1]]] * 28]).replace(b"1]", b"1e400]", 1)}, 400, "number is infinity"),
    ("negative-pixel", "POST", PREDICT, {"content": tf_body([image(-1)])}, 400, "uint8 in [0, 255]"),
    ("pixel-256", "POST", PREDICT, {"content": tf_body([image(256)])}, 400, "uint8 in [0, 255]"),
    ("int64-max-pixel", "POST", PREDICT, {"content": tf_body([image(2**63 - 1)])}, 400, "uint8 in [0, 255]"),
    ("fraction-pixel", "POST", PREDICT, {"content": tf_body([image(0)]).replace(b"0]", b"0.5]", 1)}, 400, "got float values"),
    ("batch-over-limit", "POST", PREDICT, {"content": tf_body([image()] * (MAX_BATCH + 1))}, 400, f"the limit is {MAX_BATCH} per request"),
    ("batch-of-1000-empty-lists", "POST", PREDICT, {"content": tf_body([[]] * 1000)}, 400, f"the limit is {MAX_BATCH} per request"),
    ("columnar-batch-over-limit", "POST", PREDICT, {"content": json.dumps({"inputs": [image()] * (MAX_BATCH + 1)}).encode()}, 400, f"the limit is {MAX_BATCH} per request"),
    ("instances-object", "POST", PREDICT, {"content": b'{"instances": {"a": 1}}'}, 400, "'instances' must be a list"),
    ("instances-string", "POST", PREDICT, {"content": b'{"instances": "pixels"}'}, 400, "'instances' must be a list"),
    ("instances-null", "POST", PREDICT, {"content": b'{"instances": null}'}, 400, "'instances' must be a list"),
    ("inputs-null", "POST", PREDICT, {"content": b'{"inputs": null}'}, 400, "non-numeric"),
    ("signature-not-string", "POST", PREDICT, {"content": b'{"signature_name": 5, "instances": []}'}, 400, "'signature_name' must be a string"),
    ("unknown-signature", "POST", PREDICT, {"content": json.dumps({"signature_name": "x" * 5000, "instances": [image()]}).encode()}, 400, "not found"),
    ("body-null", "POST", PREDICT, {"content": b"null"}, 400, "JSON object"),
    ("body-whitespace", "POST", PREDICT, {"content": b"   \n\t "}, 400, "malformed JSON"),
    ("body-invalid-utf8", "POST", PREDICT, {"content": b'{"instances": "\xff\xfe"}'}, 400, "malformed JSON"),
    ("body-utf16", "POST", PREDICT, {"content": GOOD_ROW.decode().encode("utf-16")}, 400, "malformed JSON"),
    ("trailing-garbage", "POST", PREDICT, {"content": GOOD_ROW + b"]]]"}, 400, "malformed JSON"),
    ("b64-not-string", "POST", PREDICT, {"content": b'{"instances": [{"b64": 5}]}'}, 400, "a b64 object must be"),
    ("b64-extra-key", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(SMALL_PNG), "x": 1}]}).encode()}, 400, "a b64 object must be"),
    ("b64-invalid", "POST", PREDICT, {"content": b'{"instances": [{"b64": "@@@"}]}'}, 400, "invalid base64"),
    ("b64-png-bomb-30000", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(png_declaring(30000, 30000))}]}).encode()}, 413, "30000x30000 pixels exceeds the limit"),
    ("b64-png-over-limit-2049", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(solid_png(2049))}]}).encode()}, 413, "2049x2049 pixels exceeds the limit of 4194304"),
    ("b64-truncated-png", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(NOISE_PNG[: len(NOISE_PNG) // 2])}]}).encode()}, 400, "cannot decode image"),
    ("b64-gif", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(b"GIF89a" + bytes(100))}]}).encode()}, 400, "expected a PNG/JPEG image or 784 raw bytes"),
    ("b64-png-any-size-model", "POST", f"/v1/models/{ANY_SIZE}:predict", {"content": json.dumps({"instances": [{"b64": b64(SMALL_PNG)}]}).encode()}, 400, "b64 values need a fixed per-instance shape"),
    ("b64-batch-over-limit", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(SMALL_PNG)}] * (MAX_BATCH + 1)}).encode()}, 400, f"the limit is {MAX_BATCH} per request"),
    ("2000-unknown-inputs", "POST", PREDICT, {"content": json.dumps({"inputs": {f"in{i}": [0] for i in range(2000)}}).encode()}, 400, "and 1995 more"),
    ("unknown-input-name", "POST", PREDICT, {"content": json.dumps({"inputs": {"x" * 3000: [image()]}}).encode()}, 400, "unknown input"),
    ("body-over-limit", "POST", PREDICT, {"content": b" " * (MAX_BODY + 1)}, 413, "exceeds the limit"),
    ("chunked-body-over-limit", "POST", PREDICT, {"content": chunked(MAX_BODY + 1)}, 413, "exceeds the limit"),
    ("timeout-nan", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "nan"}}, 400, "not a positive number"),
    ("timeout-zero", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "0"}}, 400, "not a positive number"),
    ("timeout-negative", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "-5"}}, 400, "not a positive number"),
    ("timeout-infinite", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "inf"}}, 400, "not a positive number"),
    ("timeout-1e309", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "1e309"}}, 400, "not a positive number"),
    ("timeout-text", "POST", PREDICT, {"content": GOOD_ROW, "headers": {TIMEOUT: "soon"}}, 400, "not a positive number"),
    ("unknown-model", "POST", "/v1/models/nope:predict", {"content": GOOD_ROW}, 404, "model 'nope' not found"),
    ("model-name-4kb", "POST", "/v1/models/" + "m" * 4000 + ":predict", {"content": GOOD_ROW}, 404, "not found"),
    ("version-not-integer", "POST", f"/v1/models/{MODEL}/versions/one:predict", {"content": GOOD_ROW}, 400, "is not an integer"),
    ("version-huge", "POST", f"/v1/models/{MODEL}/versions/{10**30}:predict", {"content": GOOD_ROW}, 400, "version of 31 digits is out of range"),
    ("version-5000-digits", "POST", f"/v1/models/{MODEL}/versions/{'9' * 5000}:predict", {"content": GOOD_ROW}, 400, "version of 5000 digits is out of range"),
    ("utf8-bom-before-json", "POST", PREDICT, {"content": b"\xef\xbb\xbf" + GOOD_ROW}, 400, "byte order mark"),
    ("version-negative", "POST", f"/v1/models/{MODEL}/versions/-1:predict", {"content": GOOD_ROW}, 404, "not found"),
    ("unknown-label", "POST", f"/v1/models/{MODEL}/labels/gold:predict", {"content": GOOD_ROW}, 404, "label 'gold'"),
]  # fmt: skip

V2_JSON_CASES: list[RestCase] = [
    ("shape-overflow-int64", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[2**62, 2**62, 28, 1], data=[0])])}, 400, "expects shape [-1, 28, 28, 1]"),
    ("shape-negative", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[-1, 28, 28, 1])])}, 400, "non-negative integers"),
    ("shape-bool", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[True, 28, 28, 1])])}, 400, "non-negative integers"),
    ("shape-float", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[1.0, 28, 28, 1])])}, 400, "non-negative integers"),
    ("shape-string", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape="1,28,28,1")])}, 400, "non-negative integers"),
    ("shape-wrong-rank", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[784])])}, 400, "expects shape"),
    ("batch-over-limit", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[MAX_BATCH + 1, 28, 28, 1], data=[0])])}, 400, f"the limit is {MAX_BATCH} per request"),
    ("empty-batch", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[0, 28, 28, 1], data=[])])}, 400, "empty batch"),
    ("datatype-unknown", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(datatype="INT128")])}, 400, "unknown datatype 'INT128'"),
    ("datatype-wrong", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(datatype="FP32")])}, 400, "expects dtype uint8, received float32"),
    ("datatype-bytes", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(datatype="BYTES", data=["a"] * 784)])}, 400, "expects dtype uint8, received object"),
    ("datatype-missing", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(datatype=...)])}, 400, "needs a 'datatype'"),
    ("name-missing", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(name=...)])}, 400, "needs a 'name'"),
    ("name-empty", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(name="")])}, 400, "needs a 'name'"),
    ("name-unknown", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(name="pixels")])}, 400, "unknown input 'pixels'"),
    ("input-twice", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(), v2_tensor()])}, 400, "appears twice"),
    ("inputs-not-list", "POST", INFER, {"content": b'{"inputs": {"image": []}}'}, 400, "non-empty 'inputs' list"),
    ("input-not-object", "POST", INFER, {"content": b'{"inputs": [[1, 2]]}'}, 400, "inputs[0] must be an object"),
    ("data-string", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data="0" * 784)])}, 400, "'data' must be a list"),
    ("data-bools", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[True] * 784)])}, 400, "not true/false"),
    ("data-one-bool", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[0] * 783 + [False])])}, 400, "not true/false"),
    ("data-floats", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[0.5] * 784)])}, 400, "holds floats"),
    ("data-256", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[256] * 784)])}, 400, "out of range for UINT8"),
    ("data-negative", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[-1] * 784)])}, 400, "out of range for UINT8"),
    ("data-int-beyond-64-bits", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[0] * 783 + [2**70])])}, 400, "holds floats"),
    ("data-strings", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=["1"] * 784)])}, 400, "must hold numbers"),
    ("data-objects", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[{"a": 1}] * 784)])}, 400, "must hold numbers"),
    ("data-ragged", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[[0] * 392, [0] * 391])])}, 400, "ragged"),
    ("data-count-mismatch", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[0] * 783)])}, 400, "'data' has 783 elements"),
    ("data-and-binary-size", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(data=[0] * 784, parameters={"binary_data_size": 784})])}, 400, "both 'data' and parameters.binary_data_size"),
    ("no-data-no-binary", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(parameters={})])}, 400, "neither 'data' nor binary_data_size"),
    ("input-parameters-list", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(parameters=[1])])}, 400, "parameters must be an object"),
    ("shared-memory-input", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(parameters={"shared_memory_region": "r"})])}, 400, "shared-memory inputs and outputs are not supported"),
    ("request-parameters-string", "POST", INFER, {"content": v2_body(parameters="binary")}, 400, "parameters must be an object"),
    ("binary-data-output-not-bool", "POST", INFER, {"content": v2_body(parameters={"binary_data_output": "yes"})}, 400, "binary_data_output must be true or false"),
    ("id-not-string", "POST", INFER, {"content": v2_body(id=42)}, 400, "'id' must be a string"),
    ("outputs-not-list", "POST", INFER, {"content": v2_body(outputs={"name": "probabilities"})}, 400, "'outputs' must be a list"),
    ("output-without-name", "POST", INFER, {"content": v2_body(outputs=[{}])}, 400, "outputs[0] needs a 'name'"),
    ("output-parameters-list", "POST", INFER, {"content": v2_body(outputs=[{"name": "probabilities", "parameters": [1]}])}, 400, "outputs[0].parameters must be an object"),
    ("output-binary-data-string", "POST", INFER, {"content": v2_body(outputs=[{"name": "probabilities", "parameters": {"binary_data": "true"}}])}, 400, "binary_data must be true or false"),
    ("output-classification", "POST", INFER, {"content": v2_body(outputs=[{"name": "probabilities", "parameters": {"classification": 3}}])}, 400, "classification extension is not supported"),
    ("output-unknown", "POST", INFER, {"content": v2_body(outputs=[{"name": "logits"}])}, 400, "unknown output 'logits'"),
    ("depth-1100", "POST", INFER, {"content": deep(1100, "inputs")}, 400, "depth limit exceeded"),
    ("body-array", "POST", INFER, {"content": b"[]"}, 400, "JSON object"),
    ("any-size-input-over-byte-limit", "POST", f"/v2/models/{ANY_SIZE}/infer", {"content": v2_body(inputs=[v2_tensor(shape=[1, 2**20, 2**20, 1], data=[0])])}, 400, "would take 1099511627776 bytes; the limit is 1048576"),
    ("unknown-model", "POST", "/v2/models/nope/infer", {"content": v2_body()}, 404, "model 'nope' not found"),
    ("version-not-integer", "POST", f"/v2/models/{MODEL}/versions/x/infer", {"content": v2_body()}, 400, "is not an integer"),
    ("utf8-bom-before-json", "POST", INFER, {"content": b"\xef\xbb\xbf" + v2_body()}, 400, "byte order mark"),
    ("shape-300000-ones", "POST", INFER, {"content": v2_body(inputs=[v2_tensor(shape=[1] * 300_000, data=[0])])}, 400, "... (300000 dimensions)]"),
]  # fmt: skip

_BIN = {"name": "image", "shape": [1, 28, 28, 1], "datatype": "UINT8"}
V2_BINARY_CASES: list[RestCase] = [
    ("shape-overflow-size-0", "POST", INFER, v2_binary({**_BIN, "shape": [2**62, 2**62, 28, 1], "parameters": {"binary_data_size": 0}}, b""), 400, "expects shape [-1, 28, 28, 1]"),
    ("any-size-overflow-size-0", "POST", f"/v2/models/{ANY_SIZE}/infer", v2_binary({**_BIN, "shape": [1, 2**62, 2**62, 1], "parameters": {"binary_data_size": 0}}, b""), 400, "the limit is 1048576 bytes per input"),
    ("header-length-text", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "ten"), 400, "is not a non-negative integer"),
    ("header-length-negative", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "-1"), 400, "is not a non-negative integer"),
    ("header-length-plus", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "+90"), 400, "is not a non-negative integer"),
    ("header-length-exponent", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "1e2"), 400, "is not a non-negative integer"),
    ("header-length-underscore", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "1_0"), 400, "is not a non-negative integer"),
    ("header-length-beyond-body", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), str(10**6)), 400, "does not fit a body"),
    ("header-length-cuts-json", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "20"), 400, "malformed JSON"),
    ("binary-size-negative", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": -784}}, bytes(784)), 400, "binary_data_size -784 exceeds"),
    ("binary-size-bool", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": True}}, bytes(1)), 400, "binary_data_size True exceeds"),
    ("binary-size-float", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784.0}}, bytes(784)), 400, "binary_data_size 784.0 exceeds"),
    ("binary-size-beyond-body", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 10**12}}, bytes(784)), 400, "exceeds the 784 binary bytes left"),
    ("binary-size-short", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 700}}, bytes(700)), 400, "700 binary bytes, but UINT8 [1, 28, 28, 1] needs 784"),
    ("binary-trailing-bytes", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(800)), 400, "16 binary bytes after the last binary input"),
    ("binary-batch-over-limit", "POST", INFER, v2_binary({**_BIN, "shape": [MAX_BATCH + 1, 28, 28, 1], "parameters": {"binary_data_size": 784 * (MAX_BATCH + 1)}}, bytes(784 * (MAX_BATCH + 1))), 400, f"the limit is {MAX_BATCH} per request"),
    ("binary-wrong-datatype", "POST", INFER, v2_binary({**_BIN, "datatype": "FP32", "parameters": {"binary_data_size": 784 * 4}}, bytes(784 * 4)), 400, "expects dtype uint8, received float32"),
    ("header-length-5003-digits", "POST", INFER, v2_binary({**_BIN, "parameters": {"binary_data_size": 784}}, bytes(784), "9" * 5003), 400, "of 5003 digits is out of range"),
    ("binary-header-not-json", "POST", INFER, {"content": b"\x00" * 800, "headers": {"Inference-Header-Content-Length": "16"}}, 400, "malformed JSON"),
]  # fmt: skip

IMAGE_CASES: list[RestCase] = [
    ("png-bomb-30000", "POST", CLASSIFY, {"content": png_declaring(30000, 30000)}, 413, "30000x30000 pixels exceeds the limit"),
    ("png-12000", "POST", CLASSIFY, {"content": png_declaring(12000, 12000, zlib.compress(bytes(12001 * 20)))}, 413, "12000x12000 pixels exceeds the limit"),
    ("png-2049-valid", "POST", CLASSIFY, {"content": solid_png(2049)}, 413, "2049x2049 pixels exceeds the limit of 4194304"),
    ("png-one-row-of-5m", "POST", CLASSIFY, {"content": png_declaring(5_000_000, 1)}, 413, "5000000x1 pixels exceeds"),
    ("jpeg-65000", "POST", CLASSIFY, {"content": jpeg_declaring(65000, 65000)}, 413, "65000x65000 pixels exceeds"),
    ("png-without-idat", "POST", CLASSIFY, {"content": png_declaring(28, 28, None)}, 400, "cannot decode image"),
    ("png-truncated", "POST", CLASSIFY, {"content": NOISE_PNG[: len(NOISE_PNG) // 2]}, 400, "cannot decode image"),
    ("png-garbage-idat", "POST", CLASSIFY, {"content": png_declaring(28, 28, b"\x00garbage")}, 400, "cannot decode image"),
    ("png-zero-size", "POST", CLASSIFY, {"content": png_declaring(0, 0)}, 400, "cannot decode image"),
    ("jpeg-1000-scans", "POST", CLASSIFY, {"content": progressive_jpeg(repeat_last_scan=1000)}, 400, "more than 100 scans, the limit"),
    ("b64-jpeg-1000-scans", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(progressive_jpeg(repeat_last_scan=1000))}]}).encode()}, 400, "more than 100 scans, the limit"),
    ("png-5400-empty-chunks", "POST", CLASSIFY, {"content": with_empty_segments(SMALL_PNG, 5400)}, 400, "PNG with more than 95 chunks in 64"),
    ("jpeg-16000-empty-comments", "POST", CLASSIFY, {"content": with_empty_segments(SMALL_JPEG, 16000)}, 400, "segments before its first scan"),
    ("b64-png-5400-empty-chunks", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(with_empty_segments(SMALL_PNG, 5400))}]}).encode()}, 400, "PNG with more than 95 chunks"),
    ("jpeg-60kb-fill-bytes", "POST", CLASSIFY, {"content": with_fill_bytes(SMALL_JPEG, 60_000)}, 400, "segments before its first scan (fill and stray bytes count)"),
    ("b64-jpeg-60kb-fill-bytes", "POST", PREDICT, {"content": json.dumps({"instances": [{"b64": b64(with_fill_bytes(SMALL_JPEG, 60_000))}]}).encode()}, 400, "segments before its first scan"),
    ("jpeg-60kb-stray-bytes", "POST", CLASSIFY, {"content": SMALL_JPEG[:2] + b"\xff\xfe\x00\x02" + b"s" * 60_000 + SMALL_JPEG[2:]}, 400, "segments before its first scan"),
    ("jpeg-without-scan", "POST", CLASSIFY, {"content": jpeg_declaring(28, 28)}, 400, "cannot decode image"),
    ("gif", "POST", CLASSIFY, {"content": b"GIF89a" + bytes(64)}, 400, "PNG or JPEG expected"),
    ("random-bytes", "POST", CLASSIFY, {"content": bytes(range(256)) * 4}, 400, "PNG or JPEG expected"),
    ("empty-body", "POST", CLASSIFY, {"content": b""}, 400, "image is empty"),
    ("top-k-zero", "POST", CLASSIFY + "?top_k=0", {"content": SMALL_PNG}, 400, "top_k must be at least 1"),
    ("top-k-negative", "POST", CLASSIFY + "?top_k=-3", {"content": SMALL_PNG}, 400, "top_k must be at least 1"),
    ("top-k-text", "POST", CLASSIFY + "?top_k=all", {"content": SMALL_PNG}, 400, "top_k"),
    ("top-k-5000-digits", "POST", CLASSIFY + "?top_k=" + "1" * 5000, {"content": SMALL_PNG}, 400, "top_k"),
    ("timeout-nan", "POST", CLASSIFY, {"content": SMALL_PNG, "headers": {TIMEOUT: "nan"}}, 400, "not a positive number"),
    ("body-over-limit", "POST", CLASSIFY, {"content": b"\x89PNG" + bytes(MAX_BODY)}, 413, "exceeds the limit"),
    ("unknown-model", "POST", "/v1/models/nope:classify_image", {"content": SMALL_PNG}, 404, "model 'nope' not found"),
    ("multipart-no-boundary", "POST", CLASSIFY, {"content": b"x", "headers": {"content-type": "multipart/form-data"}}, 400, "Missing boundary"),
    ("multipart-1001-fields", "POST", CLASSIFY, multipart([(f"f{i}", None, b"x") for i in range(1001)] + [("file", "a.png", SMALL_PNG)]), 400, "Too many fields"),
    ("multipart-two-files", "POST", CLASSIFY, multipart([("a", "a.png", SMALL_PNG), ("b", "b.png", SMALL_PNG)]), 400, "Too many files"),
    ("multipart-no-file", "POST", CLASSIFY, multipart([("note", None, b"hello")]), 400, "no file part"),
    ("multipart-huge-field", "POST", CLASSIFY, multipart([("note", None, b"x" * (128 * 1024)), ("file", "a.png", SMALL_PNG)]), 400, "Part exceeded maximum size"),
    ("multipart-empty-file", "POST", CLASSIFY, multipart([("file", "a.png", b"")]), 400, "image is empty"),
    ("multipart-png-bomb", "POST", CLASSIFY, multipart([("file", "a.png", png_declaring(30000, 30000))]), 413, "30000x30000 pixels exceeds"),
    ("multipart-garbage", "POST", CLASSIFY, {"content": b"\x00" * 100, "headers": {"content-type": "multipart/form-data; boundary=XyZ"}}, 400, "Invalid multipart data"),
]  # fmt: skip

HTTP_CASES: list[RestCase] = [
    ("header-100kb", "POST", PREDICT, {"content": GOOD_ROW, "headers": {"x-junk": "a" * 100_000}}, 431, "exceed the limit of 16384 bytes"),
    ("headers-many-small", "GET", "/v2/health/ready", {"headers": {f"x-h{i}": "v" * 100 for i in range(200)}}, 431, "exceed the limit"),
    ("url-20kb", "GET", "/v1/models/" + "u" * 20_000, {}, 431, "exceed the limit"),
    ("wrong-method", "DELETE", "/v2/health/ready", {}, 405, "Method Not Allowed"),
    ("unknown-route", "GET", "/v3/anything", {}, 404, "Not Found"),
]  # fmt: skip

REST_CASES = [
    *[("tf-" + c[0], *c[1:]) for c in TF_REST_CASES],
    *[("v2-" + c[0], *c[1:]) for c in V2_JSON_CASES],
    *[("v2bin-" + c[0], *c[1:]) for c in V2_BINARY_CASES],
    *[("image-" + c[0], *c[1:]) for c in IMAGE_CASES],
    *[("http-" + c[0], *c[1:]) for c in HTTP_CASES],
]


@pytest.mark.parametrize(
    ("method", "path", "options", "status", "words"),
    [case[1:] for case in REST_CASES],
    ids=[case[0] for case in REST_CASES],
)
def test_rest_hostile_request(
    gateway: GatewayProcess,
    method: str,
    path: str,
    options: dict[str, Any],
    status: int,
    words: str,
) -> None:
    with httpx.Client(base_url=gateway.http_url, timeout=30) as http:
        started = time.perf_counter()
        reply = http.request(method, path, **options)
        elapsed = time.perf_counter() - started
    assert reply.status_code == status, reply.text[:500]
    message = reply.json()["error"]
    assert words in message, message
    assert "Traceback" not in message and "request id" not in message
    assert len(message) < 2000, "error messages are bounded, whatever the request echoes"
    assert elapsed < 5, f"refusing took {elapsed:.1f} s"
    if status == 405:
        assert reply.headers["allow"] == "GET"


# --- gRPC ---------------------------------------------------------------------------------------
def tensor(dtype: int, dims: list[int], **values: list[Any]) -> wire.TensorProto:
    proto = wire.TensorProto(dtype=dtype)  # type: ignore[arg-type]
    for size in dims:
        proto.tensor_shape.dim.add(size=size)
    for field, items in values.items():
        getattr(proto, field).extend(items)
    return proto


def predict_request(
    *inputs: tuple[str, wire.TensorProto], model: str = MODEL, **spec: Any
) -> bytes:
    request = wire.PredictRequest(model_spec=wire.model_spec(model, **spec))
    for name, proto in inputs:
        request.inputs[name].CopyFrom(proto)
    return request.SerializeToString()


DT = wire.DataType
IMAGE_DIMS = [1, 28, 28, 1]
GOOD_TENSOR = tensor(DT.DT_UINT8, IMAGE_DIMS, int_val=[0])
CONTENT_AND_VALUES = tensor(DT.DT_UINT8, IMAGE_DIMS, int_val=[1])
CONTENT_AND_VALUES.tensor_content = bytes(784)
UNKNOWN_RANK = tensor(DT.DT_UINT8, [])
UNKNOWN_RANK.tensor_shape.unknown_rank = True

# (case id, method, serialized request, status code, words the details must contain)
GRPC_CASES: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    ("float-2e40-no-values", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_FLOAT, [2**40, 28, 28, 1]))), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype uint8, received float32"),
    ("uint8-2e40-one-value", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [2**40, 28, 28, 1], int_val=[1]))), grpc.StatusCode.INVALID_ARGUMENT, "batch of 1099511627776 rows"),
    ("int64-20000-one-value", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_INT64, [20000, 28, 28, 1], int64_val=[1]))), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype uint8, received int64"),
    ("uint8-int-val-300", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, IMAGE_DIMS, int_val=[300]))), grpc.StatusCode.INVALID_ARGUMENT, "DT_UINT8 takes [0, 255]"),
    ("uint8-int-val-minus-1", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, IMAGE_DIMS, int_val=[-1]))), grpc.StatusCode.INVALID_ARGUMENT, "DT_UINT8 takes [0, 255]"),
    ("uint8-float-val", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, IMAGE_DIMS, float_val=[3.0]))), grpc.StatusCode.INVALID_ARGUMENT, "not float_val"),
    ("uint8-int64-val", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, IMAGE_DIMS, int64_val=[3]))), grpc.StatusCode.INVALID_ARGUMENT, "not int64_val"),
    ("content-and-values", wire.PREDICT_METHOD, predict_request(("image", CONTENT_AND_VALUES)), grpc.StatusCode.INVALID_ARGUMENT, "both tensor_content and int_val"),
    ("content-short", wire.PREDICT_METHOD, predict_request(("image", wire.TensorProto(dtype=DT.DT_UINT8, tensor_shape=GOOD_TENSOR.tensor_shape, tensor_content=bytes(10)))), grpc.StatusCode.INVALID_ARGUMENT, "tensor_content has 10 bytes"),
    ("too-many-values", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, IMAGE_DIMS, int_val=[0] * 785))), grpc.StatusCode.INVALID_ARGUMENT, "785 values for 784 elements"),
    ("dtype-resource", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_RESOURCE, IMAGE_DIMS))), grpc.StatusCode.INVALID_ARGUMENT, "unsupported TensorFlow dtype"),
    ("dtype-9999", wire.PREDICT_METHOD, predict_request(("image", tensor(9999, IMAGE_DIMS))), grpc.StatusCode.INVALID_ARGUMENT, "unsupported TensorFlow dtype 9999"),
    ("dim-negative", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [-1, 28, 28, 1]))), grpc.StatusCode.INVALID_ARGUMENT, "not fully defined"),
    ("unknown-rank", wire.PREDICT_METHOD, predict_request(("image", UNKNOWN_RANK)), grpc.StatusCode.INVALID_ARGUMENT, "expects shape [-1, 28, 28, 1], received []"),
    ("wrong-rank", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [1, 784], int_val=[0]))), grpc.StatusCode.INVALID_ARGUMENT, "received [1, 784]"),
    ("batch-over-limit", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [MAX_BATCH + 1, 28, 28, 1], int_val=[0]))), grpc.StatusCode.INVALID_ARGUMENT, f"the limit is {MAX_BATCH} per request"),
    ("empty-batch", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [0, 28, 28, 1]))), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("any-size-2e40-bytes", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [1, 2**20, 2**20, 1], int_val=[1])), model=ANY_SIZE), grpc.StatusCode.INVALID_ARGUMENT, "the limit is 1048576 bytes per input"),
    ("missing-input", wire.PREDICT_METHOD, predict_request(), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'image'"),
    ("unknown-input", wire.PREDICT_METHOD, predict_request(("pixels", GOOD_TENSOR)), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'pixels'"),
    ("unknown-model", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR), model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("model-name-100kb", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR), model="m" * 100_000), grpc.StatusCode.NOT_FOUND, "not found"),
    ("unknown-version", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR), version=77), grpc.StatusCode.NOT_FOUND, "version 77"),
    ("unknown-label", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR), label="gold"), grpc.StatusCode.NOT_FOUND, "label 'gold'"),
    ("1000-unknown-outputs", wire.PREDICT_METHOD, wire.PredictRequest(model_spec=wire.model_spec(MODEL), inputs={"image": GOOD_TENSOR}, output_filter=[f"o{i}" for i in range(1000)]).SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "and 995 more"),
    ("unknown-signature", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR), signature="x"), grpc.StatusCode.INVALID_ARGUMENT, "signature 'x' not found"),
    ("empty-message", wire.PREDICT_METHOD, b"", grpc.StatusCode.NOT_FOUND, "model '' not found"),
    ("garbage-bytes", wire.PREDICT_METHOD, b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid PredictRequest"),
    ("truncated-message", wire.PREDICT_METHOD, predict_request(("image", GOOD_TENSOR))[:-3], grpc.StatusCode.INVALID_ARGUMENT, "not a valid PredictRequest"),
    ("metadata-garbage", wire.GET_MODEL_METADATA_METHOD, b"\x0a\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid GetModelMetadataRequest"),
    ("metadata-field-100kb", wire.GET_MODEL_METADATA_METHOD, wire.GetModelMetadataRequest(model_spec=wire.model_spec(MODEL), metadata_field=["f" * 100_000]).SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "(100000 characters)' is not supported"),
    ("status-garbage", wire.GET_MODEL_STATUS_METHOD, b"\x0a\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid GetModelStatusRequest"),
    ("10000-dimensions", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [1] * 10_000))), grpc.StatusCode.INVALID_ARGUMENT, "... (10000 dimensions)]"),
    ("5000-dimensions", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [1] * 5_000))), grpc.StatusCode.INVALID_ARGUMENT, "... (5000 dimensions)]"),
    ("5000-negative-dimensions", wire.PREDICT_METHOD, predict_request(("image", tensor(DT.DT_UINT8, [-1] * 5_000))), grpc.StatusCode.INVALID_ARGUMENT, "not fully defined"),
    ("input-name-100kb-bad-dtype", wire.PREDICT_METHOD, predict_request(("x" * 100_000, tensor(9999, IMAGE_DIMS))), grpc.StatusCode.INVALID_ARGUMENT, "(100000 characters)'"),
    ("message-over-limit", wire.PREDICT_METHOD, predict_request(("image", wire.TensorProto(dtype=DT.DT_UINT8, tensor_content=bytes(MAX_BODY + 1)))), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
]  # fmt: skip


# --- KServe V2 over gRPC (inference.GRPCInferenceService) ----------------------------------------
def infer_request(
    *inputs: tuple[str, str, list[int]],
    raw: list[bytes] | None = None,
    model: str = MODEL,
    version: str = "",
    **contents: list[Any],
) -> bytes:
    """A ModelInferRequest; by default one good image in raw_input_contents. ``contents``: typed
    values for the first input (``uint_contents=[...]``)."""
    request = v2_grpc.ModelInferRequest(model_name=model, model_version=version)
    for name, datatype, shape in inputs or [("image", "UINT8", IMAGE_DIMS)]:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(request.inputs[0].contents, field).extend(values)
    if raw is None and not contents:
        raw = [bytes(784)]
    request.raw_input_contents.extend(raw or [])
    return request.SerializeToString()


def with_parameter(request_bytes: bytes, key: str, **value: Any) -> bytes:
    request = v2_grpc.ModelInferRequest.FromString(request_bytes)
    request.parameters[key].CopyFrom(v2_grpc.InferParameter(**value))
    return request.SerializeToString()


def with_output(request_bytes: bytes, name: str) -> bytes:
    request = v2_grpc.ModelInferRequest.FromString(request_bytes)
    request.outputs.add(name=name)
    return request.SerializeToString()


INFER_V2 = v2_grpc.MODEL_INFER_METHOD
IMG = ("image", "UINT8", IMAGE_DIMS)
V2_GRPC_CASES: list[tuple[str, str, bytes, grpc.StatusCode, str]] = [
    ("v2-shape-product-wraps-int64", INFER_V2, infer_request(("image", "UINT8", [1, 2**62, 2**62, 1]), raw=[bytes(784)], model=ANY_SIZE), grpc.StatusCode.INVALID_ARGUMENT, "the limit is 1048576 bytes per input"),
    ("v2-shape-2e40-rows", INFER_V2, infer_request(("image", "UINT8", [2**40, 28, 28, 1]), raw=[bytes(784)]), grpc.StatusCode.INVALID_ARGUMENT, "batch of 1099511627776 rows"),
    ("v2-shape-negative", INFER_V2, infer_request(("image", "UINT8", [-1, 28, 28, 1])), grpc.StatusCode.INVALID_ARGUMENT, "negative dimension"),
    ("v2-shape-10000-dimensions", INFER_V2, infer_request(("image", "UINT8", [1] * 10_000)), grpc.StatusCode.INVALID_ARGUMENT, "... (10000 dimensions)]"),
    ("v2-raw-shorter-than-shape", INFER_V2, infer_request(IMG, raw=[bytes(783)]), grpc.StatusCode.INVALID_ARGUMENT, "783 bytes in raw_input_contents, but UINT8 [1, 28, 28, 1] needs 784"),
    ("v2-raw-longer-than-shape", INFER_V2, infer_request(IMG, raw=[bytes(785)]), grpc.StatusCode.INVALID_ARGUMENT, "785 bytes in raw_input_contents"),
    ("v2-raw-2-entries-1-input", INFER_V2, infer_request(IMG, raw=[bytes(784), bytes(784)]), grpc.StatusCode.INVALID_ARGUMENT, "2 entries for 1 inputs"),
    ("v2-raw-and-typed", INFER_V2, infer_request(IMG, raw=[bytes(784)], uint_contents=[0] * 784), grpc.StatusCode.INVALID_ARGUMENT, "send one kind"),
    ("v2-no-data", INFER_V2, infer_request(IMG, raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "0 values in uint_contents"),
    ("v2-typed-short", INFER_V2, infer_request(IMG, uint_contents=[0] * 10), grpc.StatusCode.INVALID_ARGUMENT, "10 values in uint_contents, but its shape needs 784"),
    ("v2-typed-long", INFER_V2, infer_request(IMG, uint_contents=[0] * 785), grpc.StatusCode.INVALID_ARGUMENT, "785 values in uint_contents"),
    ("v2-typed-wrong-field", INFER_V2, infer_request(IMG, fp32_contents=[0.0] * 784), grpc.StatusCode.INVALID_ARGUMENT, "belong in uint_contents, not fp32_contents"),
    ("v2-typed-uint8-300", INFER_V2, infer_request(IMG, uint_contents=[300] * 784), grpc.StatusCode.INVALID_ARGUMENT, "out of range for UINT8 [0, 255]"),
    ("v2-wrong-datatype", INFER_V2, infer_request(("image", "FP32", IMAGE_DIMS), raw=[bytes(4 * 784)]), grpc.StatusCode.INVALID_ARGUMENT, "expects dtype uint8, received float32"),
    ("v2-unknown-datatype", INFER_V2, infer_request(("image", "UINT9", IMAGE_DIMS)), grpc.StatusCode.INVALID_ARGUMENT, "unknown datatype 'UINT9'"),
    ("v2-datatype-100kb", INFER_V2, infer_request(("image", "X" * 100_000, IMAGE_DIMS)), grpc.StatusCode.INVALID_ARGUMENT, "(100000 characters)'"),
    ("v2-10000-inputs-same-name", INFER_V2, infer_request(*[IMG] * 10_000, raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "request has 10000 inputs; model takes 1"),
    ("v2-10000-inputs-distinct", INFER_V2, infer_request(*[(f"i{n}", "UINT8", [1]) for n in range(10_000)], raw=[]), grpc.StatusCode.INVALID_ARGUMENT, "request has 10000 inputs"),
    ("v2-input-twice", INFER_V2, infer_request(IMG, ("image", "UINT8", IMAGE_DIMS), raw=[bytes(784)] * 2, model=MODEL), grpc.StatusCode.INVALID_ARGUMENT, "request has 2 inputs; model takes 1"),
    ("v2-unknown-input", INFER_V2, infer_request(("pixels", "UINT8", IMAGE_DIMS)), grpc.StatusCode.INVALID_ARGUMENT, "unknown input 'pixels'"),
    ("v2-missing-input", INFER_V2, v2_grpc.ModelInferRequest(model_name=MODEL).SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "missing input 'image'"),
    ("v2-unknown-output", INFER_V2, with_output(infer_request(), "logits"), grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'logits'"),
    ("v2-shared-memory", INFER_V2, with_parameter(infer_request(), "shared_memory_region", string_param="r"), grpc.StatusCode.INVALID_ARGUMENT, "shared-memory inputs and outputs are not supported"),
    ("v2-sequence", INFER_V2, with_parameter(infer_request(), "sequence_id", int64_param=3), grpc.StatusCode.INVALID_ARGUMENT, "sequence batching is not supported"),
    ("v2-timeout-negative", INFER_V2, with_parameter(infer_request(), "timeout", int64_param=-5), grpc.StatusCode.INVALID_ARGUMENT, "positive int64 of microseconds"),
    ("v2-unknown-model", INFER_V2, infer_request(model="nope"), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("v2-model-name-100kb", INFER_V2, infer_request(model="m" * 100_000), grpc.StatusCode.NOT_FOUND, "(100000 characters)"),
    ("v2-unknown-version", INFER_V2, infer_request(version="77"), grpc.StatusCode.NOT_FOUND, "version 77 of model 'lenet' not found"),
    ("v2-version-not-a-number", INFER_V2, infer_request(version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "model version 'latest' is not a non-negative integer"),
    ("v2-version-5000-digits", INFER_V2, infer_request(version="9" * 5000), grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
    ("v2-garbage-bytes", INFER_V2, b"\xff\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT, "not a valid ModelInferRequest"),
    ("v2-truncated-message", INFER_V2, infer_request()[:-3], grpc.StatusCode.INVALID_ARGUMENT, "not a valid ModelInferRequest"),
    ("v2-empty-message", INFER_V2, b"", grpc.StatusCode.NOT_FOUND, "model '' not found"),
    ("v2-message-over-limit", INFER_V2, infer_request(IMG, raw=[bytes(MAX_BODY + 1)]), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
    ("v2-metadata-unknown-model", v2_grpc.MODEL_METADATA_METHOD, v2_grpc.ModelMetadataRequest(name="nope").SerializeToString(), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("v2-metadata-unknown-version", v2_grpc.MODEL_METADATA_METHOD, v2_grpc.ModelMetadataRequest(name=MODEL, version="9").SerializeToString(), grpc.StatusCode.NOT_FOUND, "version 9"),
    ("v2-statistics-unknown-model", v2_grpc.MODEL_STATISTICS_METHOD, v2_grpc.ModelStatisticsRequest(name="nope").SerializeToString(), grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("v2-statistics-unknown-version", v2_grpc.MODEL_STATISTICS_METHOD, v2_grpc.ModelStatisticsRequest(name=MODEL, version="9").SerializeToString(), grpc.StatusCode.NOT_FOUND, "version 9"),
    ("v2-ready-bad-version", v2_grpc.MODEL_READY_METHOD, v2_grpc.ModelReadyRequest(name=MODEL, version="x").SerializeToString(), grpc.StatusCode.INVALID_ARGUMENT, "model version 'x'"),
]  # fmt: skip
GRPC_CASES += V2_GRPC_CASES


@pytest.mark.parametrize(
    ("method", "request_bytes", "code", "words"),
    [case[1:] for case in GRPC_CASES],
    ids=[case[0] for case in GRPC_CASES],
)
def test_grpc_hostile_request(
    gateway: GatewayProcess, method: str, request_bytes: bytes, code: grpc.StatusCode, words: str
) -> None:
    with grpc.insecure_channel(gateway.grpc_target) as channel:
        call = channel.unary_unary(method)  # raw bytes both ways: requests can be anything
        with pytest.raises(grpc.RpcError) as caught:
            call(request_bytes, timeout=10)
    details = caught.value.details() or ""
    assert caught.value.code() == code, details
    assert words in details, details
    assert len(details) < 2000 and "request id" not in details


# --- connections that never finish their head ---------------------------------------------------
def test_endless_header_is_refused_once_over_the_limit(gateway: GatewayProcess) -> None:
    """A head sent in pieces that never ends: 431 and a closed connection once it passes the
    limit, not a buffer that grows with it."""
    host, port = gateway.http_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Long: ")
        sent, answer = 0, b""
        try:
            while sent < 1024 * 1024:
                conn.sendall(b"a" * 4096)
                sent += 4096
                time.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert sent < 512 * 1024, f"the gateway read {sent} bytes of one header before refusing"


def test_after_hostile_requests_healthy_bounded_and_no_bogus_series(
    gateway: GatewayProcess,
) -> None:
    """Runs after the cases above (module order): every protocol still answers, the gateway's
    memory is within RSS_SLACK_MB of where it started, and no bogus model name (it was sent a
    dozen) became a metrics label."""
    assert len(REST_CASES) + len(GRPC_CASES) >= 120
    send_good_requests(gateway)
    with httpx.Client(base_url=gateway.http_url, timeout=10) as http:
        assert http.post("/v1/models/bogus-name:predict", content=GOOD_ROW).status_code == 404
        assert http.get("/v2/health/ready").json() == {"ready": True}
        metrics = http.get("/metrics").text
    models = {
        sample.labels["model"] for sample in metric_samples(metrics) if "model" in sample.labels
    }
    assert models <= {MODEL, ANY_SIZE, "_unknown"}, models
    assert "_unknown" in models  # the bogus names were counted, under one label
    rss = gateway.rss_mb()
    baseline = gateway.baseline_rss_mb  # type: ignore[attr-defined]
    assert rss - baseline <= RSS_SLACK_MB, f"RSS {baseline:.0f} -> {rss:.0f} MiB"
    assert gateway.process.poll() is None
