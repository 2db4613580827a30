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
lint: install ## ruff (format + lint), import-linter
	$(BIN)/ruff format --check src tests migrations bench .github/scripts
	$(BIN)/ruff check src tests migrations bench .github/scripts
	$(BIN)/lint-imports

.PHONY: typecheck
typecheck: install ## mypy --strict (pydantic plugin)
	$(BIN)/mypy

.PHONY: format
format: install ## Format and auto-fix
	$(BIN)/ruff format src tests migrations bench .github/scripts
	$(BIN)/ruff check --fix src tests migrations bench .github/scripts

.PHONY: unit
unit: install ## Fast unit tests only
	$(BIN)/pytest tests/unit -q

.PHONY: test
test: lint typecheck security coverage ## Everything CI runs (.ci/run and ci.yml): lint, types, supply chain, tests

.PHONY: coverage
coverage: install ## All tests with branch coverage, one worker per core (PostgreSQL and Redis included); summary to GitHub when there
	$(BIN)/pytest -n auto --cov=handoffrail_server --cov-branch --cov-report=term:skip-covered -q --durations=15
	@if [ -n "$${GITHUB_STEP_SUMMARY:-}" ]; then \
		$(BIN)/coverage report --format=markdown >> "$$GITHUB_STEP_SUMMARY"; fi

# Supply chain, offline (README "CI and supply chain"); the network-bound scans are further down.
.PHONY: security
security: workflows bandit deptry licenses ## Offline supply-chain checks: workflows, zizmor, bandit, deptry, licenses

.PHONY: workflows
workflows: install ## GitHub workflows: schema, zizmor (no medium+ finding), pre-commit config
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.dependabot .github/dependabot.yml
	$(BIN)/zizmor --offline --min-severity medium --no-progress .github
	$(BIN)/pre-commit validate-config .pre-commit-config.yaml

.PHONY: bandit
bandit: install ## Bandit, medium severity and up (any nosec carries its reason)
	$(BIN)/bandit -ll -q -r src

.PHONY: deptry
deptry: install ## deptry: no missing, unused or transitive-only dependency
	$(BIN)/deptry src

.PHONY: licenses
licenses: install ## Runtime dependency licenses against .licenses-allowed.txt
	$(BIN)/python .github/scripts/check_licenses.py $(UV) .licenses-allowed.txt

# Network-bound: run by .github/workflows only (security.yml, release.yml, ci.yml's docker job).
IMAGE ?= handoffrail-server:ci
RELEASE := .github/scripts/release.sh

.PHONY: audit
audit: $(UV) ## [network] pip-audit of every locked dependency (uv.lock)
	@mkdir -p build
	$(UV) export --frozen --all-groups --no-emit-project --format requirements-txt -o build/requirements.lock.txt
	$(UV) tool run pip-audit==2.10.1 --strict --disable-pip --require-hashes -r build/requirements.lock.txt

.PHONY: semgrep
semgrep: $(UV) ## [network] Semgrep registry rules (p/python, p/security-audit) on src
	$(UV) tool run --from semgrep==1.185.0 semgrep scan --error --metrics=off \
		--config p/python --config p/security-audit src

.PHONY: image
image: install ## [network] hadolint, then docker build -t $(IMAGE)
	$(BIN)/hadolint Dockerfile
	docker build -t $(IMAGE) .

.PHONY: dist
dist: $(UV) ## [network] Build the wheel and the sdist into dist/
	$(UV) build --out-dir dist

.PHONY: deploy
deploy: ## [network] Release: deploy to PLATFORM (fly, render, railway); see .github/scripts/release.sh
	$(RELEASE) deploy "$(PLATFORM)"

.PHONY: smoke
smoke: install ## [network] handoffrail smoke HR_SMOKE_URL (HR_SMOKE_API_KEY; HR_SMOKE_ORIGIN optional)
	$(BIN)/handoffrail smoke "$$HR_SMOKE_URL" $${HR_SMOKE_ORIGIN:+--origin "$$HR_SMOKE_ORIGIN"}

.PHONY: rollback
rollback: install ## [network] docs/rollback.md on PLATFORM: redeploy the previous release, smoke it
	$(RELEASE) rollback "$(PLATFORM)"
	$(MAKE) smoke

.PHONY: bench
bench: install ## Benchmark vs ceilings measured in the same run (PostgreSQL + Redis; < 10 min)
	$(BIN)/handoffrail bench

.PHONY: bench-smoke
bench-smoke: install ## The benchmark harness with tiny counts (no timing meaning; CI runs it too)
	$(BIN)/handoffrail bench --smoke

.PHONY: deploy-check
deploy-check: install ## Static checks of the deployment kit (compose, hadolint, caddy, schemas, k8s, shellcheck, yamllint)
	$(BIN)/pytest tests/deploy/test_static.py tests/deploy/test_platform_files.py -q

.PHONY: browser
browser: ## Install Debian's chromium for the dashboard browser test (no-op when present)
	@test -x /usr/bin/chromium || { \
		echo "browser: installing chromium"; \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq >/dev/null && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
			chromium >/dev/null; }

.PHONY: lock
lock: $(UV) ## Re-resolve uv.lock after changing pyproject.toml
	$(UV) lock

.PHONY: clean
clean: ## Remove virtualenvs and caches
	rm -rf $(TOOLS) $(VENV) .pytest_cache .mypy_cache .ruff_cache .coverage htmlcov
