"""The naive FastAPI + ONNX Runtime server the gateway is compared with.

What a first attempt looks like: one ``session.run`` per request, on the event loop, JSON lists
in and out, default session options, TF Serving's REST ``:predict`` route only (row format).

    python -m benchmarks.lab.naive_server MODEL.onnx PORT [MODEL_NAME]
"""

import sys

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
app = FastAPI()
MODEL_NAME = sys.argv[3] if len(sys.argv) > 3 else "lenet"


@app.post(f"/v1/models/{MODEL_NAME}:predict")
async def predict(body: dict):  # type: ignore[type-arg]
    images = np.array(body["instances"], dtype=np.uint8)
    (probabilities,) = session.run(None, {"image": images})
    return {"predictions": probabilities.tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="info", access_log=False)
