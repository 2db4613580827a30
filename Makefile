# HandoffRail server: the one entry point for setting up, running and checking the project.
# Everything installs itself: a bootstrap venv with uv (.tools), then the locked project venv (.venv).

SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	@touch $@

.PHONY: install
install: $(VENV)/.synced ## Create .venv with the locked dependencies

.PHONY: serve
serve: install ## Run the server on SQLite (./handoffrail.db); prints a first admin key once
	$(BIN)/handoffrail serve

.PHONY: lint
lint: install ## ruff (format + lint), mypy --strict, import-linter
	$(BIN)/ruff format --check src tests migrations
	$(BIN)/ruff check src tests migrations
	$(BIN)/mypy
	$(BIN)/lint-imports

.PHONY: format
format: install ## Format and auto-fix
	$(BIN)/ruff format src tests migrations
	$(BIN)/ruff check --fix src tests migrations

.PHONY: unit
unit: install ## Fast unit tests only
	$(BIN)/pytest tests/unit -q

.PHONY: test
test: lint ## Everything CI runs: lint, then all tests with coverage (PostgreSQL included)
	$(BIN)/pytest --cov=handoffrail_server --cov-branch --cov-report=term:skip-covered -q

.PHONY: deploy-check
deploy-check: install ## Static checks of the deployment kit (compose, hadolint, caddy, schemas, k8s, shellcheck, yamllint)
	$(BIN)/pytest tests/deploy/test_static.py -q

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

.PHONY: clean
clean: ## Remove virtualenvs and caches
	rm -rf $(TOOLS) $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
