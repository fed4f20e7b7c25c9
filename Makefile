# hevlayer developer entry points. On a fresh clone, with nothing but python3
# (and pip) and the machine's PostgreSQL:
#   make run    start the whole suite locally, ingest a real corpus (the standard library)
#               and search it; stays up until Ctrl-C
#   make test   protos check, lint, and the whole test suite (what CI runs)
# `make help` lists the other targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
UV_VERSION ?= 0.13.9
TOOLS := .tools
UV := $(TOOLS)/uv/bin/uv
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hevlayer-synced
DATA_DIR ?= .hevlayer
PYTEST_ARGS ?=
# `make run CORPUS=path/to/docs` ingests that instead of the standard library corpus;
# RUN_ARGS are more `hevlayer demo` options (e.g. --exit to stop after the searches).
CORPUS ?=
RUN_ARGS ?=
# `make run` installs from uv.lock as it is; `make test` (CI) fails on a stale lock.
UV_SYNC_FLAGS ?= --frozen

export UV_PYTHON_DOWNLOADS := never
export UV_NO_PROGRESS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

PYPROJECTS := pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml tools/*/pyproject.toml)
MYPY_TARGETS = $(wildcard libs/common/src/hevlayer/common libs/client/src/hevlayer/client libs/devstack/src/hevlayer/devstack libs/triton/src/hevlayer/triton libs/ingest/src/hevlayer/ingest \
	services/*/src/hevlayer/* tools/*/src/hevlayer/*) $(if $(wildcard tests/*.py tests/*/*.py),tests) \
	$(if $(wildcard bench/*.py bench/*/*.py),bench) $(wildcard examples/*/*.py)

.PHONY: help bootstrap system-deps lock-check protos check-protos docs-config docs-api docs lint format test run clean \
	go-client faults fuzz

help:
	@echo "make run           the suite up, a real corpus ingested and searched (data in $(DATA_DIR)/)"
	@echo "make test          bootstrap + check-protos + lint + docs + pytest (what CI runs)"
	@echo "make bootstrap     install uv into $(TOOLS)/ and the workspace into $(VENV)/"
	@echo "make protos        regenerate libs/common/src/hevlayer/api and docs/reference/ from protos/"
	@echo "make check-protos  buf lint, generated code up to date, buf breaking vs HEAD~1"
	@echo "make docs-config   regenerate docs/configuration.md from the settings classes"
	@echo "make go-client     build the Go example client into $(GO_DIR)/bin (examples/go-client)"
	@echo "make docs-api      regenerate docs/reference/ (API reference) from the protos' comments"
	@echo "make docs          build the documentation site (mkdocs --strict) into site/"
	@echo "make lint          ruff check, ruff format --check, mypy"
	@echo "make format        ruff check --fix and ruff format"
	@echo "make faults        the seeded kill-fault campaign (FAULT_SEEDS, FAULT_ROUNDS; docs/reliability.md)"
	@echo "make fuzz          a longer fuzz campaign of the gRPC and REST APIs (FUZZ_EXAMPLES, FUZZ_SEED; tests/fuzz)"
	@echo "make clean         remove caches (keeps $(VENV), $(TOOLS) and $(DATA_DIR))"

$(UV):
	$(PYTHON) -m pip install --quiet --root-user-action=ignore --upgrade \
		--target $(TOOLS)/uv "uv==$(UV_VERSION)"
	@test -x $@ || { echo "uv was not installed at $@" >&2; exit 1; }

$(STAMP): $(UV) uv.lock $(PYPROJECTS)
	$(UV) sync $(UV_SYNC_FLAGS) --python $(PYTHON)
	@touch $@

# System packages the tests need: redis-server (the gateway's Redis chunk cache
# runs against a real server), jq (the grpcurl recipes of docs/grpcurl.md) and
# Debian's Go 1.19, grpc-go, protobuf and protoc plugins (the Go example client;
# the protobuf 1.5 shim, not 1.3, is required), tesseract-ocr (the image producer's
# offline describer: OCR through the tesseract binary; tests/ingest/test_kinds.py).
# Installed with apt-get when missing and root.
GO_DEB_PACKAGES := golang-go golang-google-grpc-dev golang-google-protobuf-dev \
	golang-github-golang-protobuf-1-5-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler
# promtool (checks and unit-tests deploy/prometheus/ in tests/observability): a promtool on PATH, else
# the one in Debian's prometheus package, taken out with apt-get download + dpkg-deb into
# $(PROMTOOL), never installed (installing the package would start a Prometheus server on :9090).
PROMTOOL := $(TOOLS)/prometheus/promtool
system-deps:
	@if ! command -v redis-server >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing redis-server and jq (apt-get)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server jq >/dev/null; \
		else \
			echo "redis-server or jq is missing: install them (e.g. apt-get install redis-server jq)" >&2; exit 1; \
		fi; \
	fi
	@if ! command -v tesseract >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing tesseract-ocr (apt-get)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				tesseract-ocr tesseract-ocr-eng >/dev/null; \
		else \
			echo "tesseract is missing: install it (e.g. apt-get install tesseract-ocr)" >&2; exit 1; \
		fi; \
	fi
	@if ! dpkg -s $(GO_DEB_PACKAGES) >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Go and the Go gRPC packages (apt-get)"; \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
				$(GO_DEB_PACKAGES) >/dev/null; \
		else \
			echo "Go packages are missing: apt-get install $(GO_DEB_PACKAGES)" >&2; exit 1; \
		fi; \
	fi
	@if ! command -v promtool >/dev/null 2>&1 && [ ! -x $(PROMTOOL) ]; then \
		if command -v apt-get >/dev/null 2>&1 && command -v dpkg-deb >/dev/null 2>&1; then \
			echo "extracting promtool from Debian's prometheus package (apt-get download)"; \
			tmp=$$(mktemp -d); \
			( cd $$tmp && apt-get download -qq -o APT::Sandbox::User=root prometheus ) 2>/dev/null || \
			{ [ "$$(id -u)" = 0 ] && apt-get update -qq && \
				( cd $$tmp && apt-get download -qq -o APT::Sandbox::User=root prometheus ); } || \
			{ rm -rf $$tmp; echo "promtool is missing and apt-get download prometheus failed" >&2; exit 1; }; \
			dpkg-deb -x $$tmp/prometheus_*.deb $$tmp/root && \
			install -D -m 0755 $$tmp/root/usr/bin/promtool $(PROMTOOL); \
			rm -rf $$tmp; \
		else \
			echo "promtool is missing: install Prometheus' promtool on PATH" >&2; exit 1; \
		fi; \
	fi

bootstrap: $(STAMP)

lock-check: $(UV)
	$(UV) lock --check --python $(PYTHON)

protos: bootstrap
	$(BIN)/python scripts/gen_protos.py
	$(BIN)/python scripts/gen_api_reference.py

check-protos: bootstrap
	scripts/check_protos.sh

docs-config: bootstrap
	$(BIN)/python scripts/gen_config_docs.py

# The Go example client: stubs from `buf generate` (buf.gen.yaml, local plugins) into the
# GOPATH $(GO_DIR), built in GOPATH mode against Debian's packages (no module proxy).
GO_DIR := build/go
go-client: | $(STAMP)
	@for tool in go protoc-gen-go protoc-gen-go-grpc; do command -v $$tool >/dev/null || \
		{ echo "go-client: $$tool is missing: run 'make system-deps' (as root)" >&2; exit 1; }; done
	$(BIN)/buf generate
	GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOPATH=$(CURDIR)/$(GO_DIR):/usr/share/gocode \
		GOCACHE=$(CURDIR)/$(GO_DIR)/cache go build -o $(GO_DIR)/bin/go-client ./examples/go-client

docs-api: bootstrap
	$(BIN)/python scripts/gen_api_reference.py

# Fails on a broken link or anchor, or a page under docs/ missing from mkdocs.yml's nav.
docs: bootstrap
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

lint: bootstrap
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy $(MYPY_TARGETS)

format: bootstrap
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: UV_SYNC_FLAGS := --locked
test: lock-check bootstrap system-deps check-protos lint docs
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

# The kill-fault campaign of docs/reliability.md ("Kill faults"): tests/faults/test_kills.py once
# per seed, every process killed FAULT_ROUNDS times per run (`make test` runs one fresh seed, one round).
FAULT_SEEDS ?= 101 202 303 404 505
FAULT_ROUNDS ?= 3
faults: bootstrap
	@for seed in $(FAULT_SEEDS); do \
		echo "== kill faults: seed $$seed, $(FAULT_ROUNDS) rounds"; \
		HEVLAYER_FAULT_SEED=$$seed HEVLAYER_FAULT_ROUNDS=$(FAULT_ROUNDS) \
			$(BIN)/pytest -p no:cacheprovider tests/faults/test_kills.py -q -s -k every_process $(PYTEST_ARGS) \
			|| { echo "kill faults failed with seed $$seed" >&2; exit 1; }; \
	done

# The fuzz campaign (tests/fuzz, docs/reliability.md "Fuzzing"): the tests `make test` runs with a few
# examples per RPC and REST operation, here with FUZZ_EXAMPLES each; FUZZ_SEED= (a number) for a new seed.
FUZZ_EXAMPLES ?= 200
fuzz: bootstrap
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(if $(FUZZ_SEED),FUZZ_SEED=$(FUZZ_SEED)) \
		$(BIN)/pytest -p no:cacheprovider tests/fuzz -q $(PYTEST_ARGS)

run: bootstrap
	$(BIN)/hevlayer --data-dir $(DATA_DIR) demo --queries tests/cli/queries.json \
		$(if $(CORPUS),--corpus $(CORPUS)) $(RUN_ARGS)

clean:
	rm -rf .pytest_cache .mypy_cache .ruff_cache .hypothesis site
	find . -name __pycache__ -type d -not -path './$(VENV)/*' -not -path './$(TOOLS)/*' \
		-prune -exec rm -rf {} +
