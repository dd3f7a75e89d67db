# PostLens — every target does its own set-up, so each works on a fresh machine.
#   make demo       the pipeline end to end on the local stack (synthetic posts → Kafka → Triton → Elasticsearch)
#   make test       every test, against the real local stack (what CI runs, after make lint)
#   make test-fast  the tests marked neither integration nor slow: no services
#   make lint       ruff (lint and format) and mypy, configured in pyproject.toml
#   make bench      benchmarks: print figures, write reports/ (markdown + PNG)
#   make chaos      one fault at a time under a steady load of real tweets → reports/chaos.md (+ PNG); ~40 min

SHELL := /bin/bash
POSTLENS_HOME ?= $(HOME)/.cache/postlens
export POSTLENS_HOME
# Debian's python3.11, not another build: Triton's Python-backend stub links Debian's libpython3.11 and loads the
# venv's standard library, whose C extensions must match that libpython.
SYSTEM_PYTHON := /usr/bin/python3.11
VENV := $(POSTLENS_HOME)/venv-debian-py311
PY := .venv/bin/python
UV_VERSION := 0.13.9
# uv in a folder of its own: no dependence on which Python owns pip, or on a system install PEP 668 refuses.
UV := $(POSTLENS_HOME)/uv-$(UV_VERSION)/bin/uv
# deploy.local builds Label Studio's own virtualenv with it.
POSTLENS_UV ?= $(UV)
export POSTLENS_UV
# chromium: the labeling page test (Playwright drives it; it downloads no browser of its own).
SYSTEM_PACKAGES := python3.11 libpython3.11 redis-server kcat curl unzip chromium

.PHONY: setup system-packages deploy-tools deploy-gpu-requirements k8s-check images lint test test-fast \
        test-images demo bench bench-model bench-serving bench-stream bench-label chaos up down status clean-cache

setup: system-packages .venv/.synced

# The venv lives outside the clone (it is large and shared by clones); .venv is a link to it.
.venv/.synced: pyproject.toml uv.lock
	@test -x $(UV) || python3 -m pip install --quiet --target $(POSTLENS_HOME)/uv-$(UV_VERSION) "uv==$(UV_VERSION)"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --extra dev --python $(SYSTEM_PYTHON)
	ln -sfn $(VENV) .venv
	touch $(VENV)/.synced

system-packages:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

up: setup
	$(PY) -m deploy.local up

status: setup
	$(PY) -m deploy.local status

down:
	$(PY) -m deploy.local down

# Every test, the container images built and started included (`make images`: from the uv cache `make setup` fills).
test: setup deploy-tools images
	$(PY) -m deploy.local up
	$(PY) -m pytest

# Only the tests that start the images (marker `images`), after building them.
test-images: setup images
	$(PY) -m deploy.local up
	$(PY) -m pytest -m images

test-fast: setup deploy-tools
	$(PY) -m pytest -m "not integration and not slow" -n auto

# What mypy checks is `files` in pyproject.toml; tests/test_lint.py runs these same lines on a broken copy.
lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

# What PostLens caches under POSTLENS_HOME and fetches or rebuilds by itself when it is missing: the services'
# downloaded archives (deploy.local), the benchmarks' and the demo's trained models and synthetic data. Kept: the
# venv and the deploy tools (make setup, make deploy-tools rebuild them, slowly), the services' data and logs (the
# stack may be running), and retrained checkpoints (results, not caches).
clean-cache:
	rm -rf $(POSTLENS_HOME)/downloads $(POSTLENS_HOME)/bench $(POSTLENS_HOME)/demo

demo: setup
	$(PY) -m deploy.demo

bench: bench-model bench-serving bench-stream bench-label

bench-model: setup
	$(PY) -m bench.model

bench-serving: setup
	$(PY) -m deploy.local up
	$(PY) -m bench.serving

bench-stream: setup
	$(PY) -m deploy.local up
	$(PY) -m bench.stream

bench-label: setup
	$(PY) -m deploy.local up
	$(PY) -m deploy.local up --only label-studio
	$(PY) -m bench.label

# Starts its own Kafka, Redis and Triton on free ports and reaches the stack's Elasticsearch through proxies: it never
# stops a shared service, so it may run beside the tests (only slower: it loads the machine for its whole run).
chaos: setup
	$(PY) -m deploy.local up --only elasticsearch
	$(PY) -m bench.chaos

# Tools the deploy/ checks drive (tests/deploy): helm and the Docker Compose CLI plugin built from their Go modules
# (Go >= 1.26.8 on PATH), kubernetes-validate (Kubernetes schemas bundled, works offline) and KEDA's CRDs from its Go
# module. Compose's go.mod has exclude directives, which `go install module@version` refuses: it is built in a copy.
HELM_VERSION := v3.21.4
COMPOSE_VERSION := v5.6.0
KEDA_VERSION := v2.20.2
KUBERNETES_VALIDATE_VERSION := 1.37.0
DEPLOY_TOOLS := $(POSTLENS_HOME)/deploy-tools

deploy-tools: $(DEPLOY_TOOLS)/.helm-$(HELM_VERSION) $(DEPLOY_TOOLS)/.compose-$(COMPOSE_VERSION) \
              $(DEPLOY_TOOLS)/.keda-$(KEDA_VERSION) $(DEPLOY_TOOLS)/.kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION)

$(DEPLOY_TOOLS)/.helm-$(HELM_VERSION):
	GOBIN=$(DEPLOY_TOOLS)/bin GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	touch $@

$(DEPLOY_TOOLS)/.compose-$(COMPOSE_VERSION):
	src=$$(GOFLAGS=-mod=mod go mod download -json github.com/docker/compose/v5@$(COMPOSE_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && test -n "$$src" && \
	build=$$(mktemp -d) && cp -r "$$src/." "$$build" && chmod -R u+w "$$build" && \
	(cd "$$build" && GOFLAGS=-mod=mod go build -trimpath -ldflags "-s -w -X github.com/docker/compose/v5/internal.Version=$(COMPOSE_VERSION)" \
	  -o $(DEPLOY_TOOLS)/docker/cli-plugins/docker-compose ./cmd); status=$$?; rm -rf "$$build"; exit $$status
	touch $@

$(DEPLOY_TOOLS)/.keda-$(KEDA_VERSION):
	src=$$(GOFLAGS=-mod=mod go mod download -json github.com/kedacore/keda/v2@$(KEDA_VERSION) | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p') && test -n "$$src" && \
	dir=$(DEPLOY_TOOLS)/keda-$(KEDA_VERSION) && mkdir -p $$dir && cp "$$src"/config/crd/bases/keda.sh_*.yaml $$dir/ && \
	cp "$$src"/pkg/scalers/kafka_scaler.go $$dir/  # the trigger metadata names KEDA reads
	touch $@

# The images, built with podman on a Debian base made here (deploy/images.sh; needs root): worker, triton-cpu, trainer.
images:
	deploy/images.sh

# The chart against a real API server and KEDA scaling on real lag (deploy/k8s/check.sh; not part of `make test`).
ETCD_VERSION := v3.7.3
KUBERNETES_VERSION := v1.37.2
KWOK_VERSION := v0.8.0
k8s-check: deploy-tools
	$(PY) -m deploy.local up
	PATH=$(CURDIR)/.venv/bin:$$PATH POSTLENS_HOME=$(POSTLENS_HOME) ETCD_VERSION=$(ETCD_VERSION) \
	  KUBERNETES_VERSION=$(KUBERNETES_VERSION) KWOK_VERSION=$(KWOK_VERSION) KEDA_VERSION=$(KEDA_VERSION) deploy/k8s/check.sh

# The Triton image's onnxruntime-gpu: the version uv.lock pins onnxruntime at, with its wheels' hashes.
deploy-gpu-requirements:
	version=$$(sed -n '/^name = "onnxruntime"$$/{n;s/^version = "\(.*\)"/\1/p}' uv.lock) && test -n "$$version" && \
	{ sed -n '1,3p' deploy/docker/onnxruntime-gpu.txt; echo "onnxruntime-gpu==$$version" | \
	  $(UV) pip compile - --no-deps --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --no-header --quiet | grep -v '^ *# via'; } > deploy/docker/onnxruntime-gpu.txt.new && \
	mv deploy/docker/onnxruntime-gpu.txt.new deploy/docker/onnxruntime-gpu.txt

$(DEPLOY_TOOLS)/.kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION): | .venv/.synced
	UV_TOOL_DIR=$(DEPLOY_TOOLS)/uv-tools UV_TOOL_BIN_DIR=$(DEPLOY_TOOLS)/bin \
	  $(UV) tool install --force --python $(SYSTEM_PYTHON) kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)
	touch $@
