# syntax=docker/dockerfile:1
# The gateway for GPU hosts: FastAPI + grpc.aio in front of ONNX Runtime (CUDA 13 + cuDNN 9).
# No TensorFlow in it: the gateway loads model.onnx only, which keeps the image small and the
# start fast. Build from the repository root:
#   docker build -f deploy/docker/gateway.Dockerfile -t convnet-serving/gateway:gpu .
# onnxruntime-gpu 1.31 is built against CUDA 13.0 and cuDNN 9, so the base image provides those
# runtime libraries (and nothing for compiling).
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# The base image's own Ubuntu packages: exact apt pins would break with every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
# A venv, because Ubuntu's system Python refuses pip installs (PEP 668); the final stage copies it.
RUN python3 -m venv /opt/venv
WORKDIR /src
# Only what the gateway runs: the wire code in clients/ and the server in serving/.
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY serving ./serving
# ".[extra]" is this project: its pyproject pins each dependency to a compatible range.
# hadolint ignore=DL3013
RUN /opt/venv/bin/pip install --no-compile ".[serve]" \
    && /opt/venv/bin/python -c "import onnxruntime, serving; print(onnxruntime.__version__)"

FROM ${CUDA_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# The interpreter the venv was built with (same base image), nothing else.
# The base image's own Ubuntu packages: exact apt pins would break with every security update.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVING_REPOSITORY=/models \
    SERVING_HTTP_PORT=8501 \
    SERVING_GRPC_PORT=8500 \
    SERVING_DEVICE=auto
USER 10001:10001
EXPOSE 8500 8501
# The commit the image is built from, for serving_build_info on /metrics (not a setting):
#   docker build --build-arg SERVING_GIT_COMMIT="$(git rev-parse HEAD)" ...   ("" when not given)
# Last, so that a new commit rebuilds no layer.
ARG SERVING_GIT_COMMIT=""
ENV SERVING_GIT_COMMIT=${SERVING_GIT_COMMIT}
# Ready means every configured model has a loaded version (KServe V2 readiness).
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
# Options come from the SERVING_* variables above, so `docker run -e` and compose can change
# them; arguments after the image name override them (python -m serving --help).
ENTRYPOINT ["python", "-m", "serving"]
