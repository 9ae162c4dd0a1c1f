# syntax=docker/dockerfile:1
# The gateway for hosts without a GPU: the same server on ONNX Runtime's CPU build.
#   docker build -f deploy/docker/gateway.cpu.Dockerfile -t convnet-serving/gateway:cpu .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY serving ./serving
# The serve extra names onnxruntime-gpu; both wheels provide the same `onnxruntime` module, so
# swapping in the CPU wheel (a tenth of the size, no CUDA provider) changes nothing else.
RUN /opt/venv/bin/pip install --no-compile ".[serve]" \
    && /opt/venv/bin/pip uninstall -y onnxruntime-gpu \
    && /opt/venv/bin/pip install --no-compile "onnxruntime>=1.31,<1.32" \
    && /opt/venv/bin/python -c "import onnxruntime, serving; print(onnxruntime.get_available_providers())"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin serving
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SERVING_REPOSITORY=/models \
    SERVING_HTTP_PORT=8501 \
    SERVING_GRPC_PORT=8500 \
    SERVING_DEVICE=cpu
USER 10001:10001
EXPOSE 8500 8501
# The commit the image is built from, for serving_build_info on /metrics (not a setting):
#   docker build --build-arg SERVING_GIT_COMMIT="$(git rev-parse HEAD)" ...   ("" when not given)
# Last, so that a new commit rebuilds no layer.
ARG SERVING_GIT_COMMIT=""
ENV SERVING_GIT_COMMIT=${SERVING_GIT_COMMIT}
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "serving.healthcheck"]
# Options come from the SERVING_* variables above, so `docker run -e` and compose can change
# them; arguments after the image name override them (python -m serving --help).
ENTRYPOINT ["python", "-m", "serving"]
