# smtp-infra: `make demo` runs the local demo, `make test` runs everything CI runs.
# Both do all set-up themselves on a fresh machine (Debian packages, the virtualenv, the
# control-plane binaries built from Go modules into $(CACHE)).

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
BIN := $(VENV)/bin
export SMTP_INFRA_CACHE ?= $(HOME)/.cache/smtp-infra

.PHONY: help venv deps controlplane crds lint test test-fast demo demo-down clean

help:
	@echo "make demo       local control plane + CRDs + operator + examples, then kubectl get smtpinfra"
	@echo "make demo-down  stop the demo"
	@echo "make test       everything CI runs (installs what is missing first)"
	@echo "make lint       ruff + mypy + import contracts and cycles + CRD drift check"

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

deps:
	scripts/install-system-deps.sh

controlplane:
	testenv/build-controlplane.sh >/dev/null

crds: venv
	$(BIN)/smtp-infra crds generate

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_import_cycles.py
	$(BIN)/smtp-infra crds generate --check
	$(BIN)/python scripts/check_test_assertions.py tests
	$(BIN)/hadolint operator/Dockerfile mta-image/Dockerfile

# The control-plane build is the long pole on a fresh machine: start it first, in the
# background, and install everything else while it runs.
test:
	scripts/test.sh

demo: deps venv controlplane
	scripts/demo.sh up

demo-down: venv
	scripts/demo.sh down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
