# One venv, a few targets. `make run` and `make test` work on a fresh machine with only Python
# (`make test` also installs Node packages and Chromium for the browser and client tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
NODE_INSTALLED := node_modules/.installed
ASSETS := jobql/static/vendor/.built

.PHONY: install lock assets system-packages run test check bench fmt clean

install: $(INSTALLED)

# Exactly the versions in requirements-dev.lock, then jobql itself held to them (pip
# refuses a lock that pyproject.toml's ranges do not admit).
$(INSTALLED): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet -c requirements-dev.lock -e '.[dev]'
	touch $@

# Pin pyproject.toml's dependencies again, at the newest versions its bounds allow:
# requirements.lock for production (the Dockerfile), requirements-dev.lock for the rest.
lock: install
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --python-version 3.11 --no-annotate \
		--custom-compile-command "make lock" --upgrade -o requirements.lock
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 --no-annotate \
		--custom-compile-command "make lock" --upgrade -o requirements-dev.lock

# GraphiQL's and the job page's scripts, served by jobql itself (without them the
# pages fall back to a CDN).
assets: $(ASSETS)

$(NODE_INSTALLED): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(ASSETS): $(NODE_INSTALLED) scripts/build-assets.mjs
	node scripts/build-assets.mjs
	touch $@

# What pip cannot provide: Chromium for the browser test, wrk for the benchmarks.
system-packages:
	@command -v chromium >/dev/null && command -v wrk >/dev/null || \
		{ apt-get update -qq && apt-get install -y -qq chromium wrk >/dev/null; }

run: install
	@command -v npm >/dev/null && $(MAKE) --no-print-directory assets || \
		echo "npm not found: GraphiQL will load its scripts from a CDN"
	$(BIN)/jobql dev

test: check assets system-packages
	$(BIN)/pytest

check: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: install assets system-packages
	$(BIN)/python -m bench

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) node_modules jobql/static/vendor .mypy_cache .ruff_cache .pytest_cache
