# PostLens — every target does its own set-up, so each works on a fresh machine.
#   make demo    the pipeline end to end on the local stack (synthetic posts → Kafka → Triton → Elasticsearch)
#   make test    every test, against the real local stack
#   make bench   benchmarks: print figures, write reports/ (markdown + PNG)
#   make chaos   one fault at a time under a steady load of real tweets → reports/chaos.md (+ PNG); ~40 min

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
SYSTEM_PACKAGES := python3.11 libpython3.11 redis-server kcat curl unzip

.PHONY: setup system-packages deploy-tools test test-unit demo bench bench-model bench-serving bench-stream chaos up down status clean-cache

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

test: setup deploy-tools
	$(PY) -m deploy.local up
	$(PY) -m pytest

test-unit: setup deploy-tools
	$(PY) -m pytest -m "not integration and not slow"

demo: setup
	$(PY) -m deploy.demo

bench: bench-model bench-serving bench-stream

bench-model: setup
	$(PY) -m bench.model

bench-serving: setup
	$(PY) -m deploy.local up
	$(PY) -m bench.serving

bench-stream: setup
	$(PY) -m deploy.local up
	$(PY) -m bench.stream

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
KEDA_VERSION := v2.18.3
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
	mkdir -p $(DEPLOY_TOOLS)/keda && cp "$$src"/config/crd/bases/keda.sh_*.yaml $(DEPLOY_TOOLS)/keda/ && \
	cp "$$src"/pkg/scalers/kafka_scaler.go $(DEPLOY_TOOLS)/keda/  # the trigger metadata names KEDA reads
	touch $@

$(DEPLOY_TOOLS)/.kubernetes-validate-$(KUBERNETES_VALIDATE_VERSION): | .venv/.synced
	UV_TOOL_DIR=$(DEPLOY_TOOLS)/uv-tools UV_TOOL_BIN_DIR=$(DEPLOY_TOOLS)/bin \
	  $(UV) tool install --force --python $(SYSTEM_PYTHON) kubernetes-validate==$(KUBERNETES_VALIDATE_VERSION)
	touch $@
