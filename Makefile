# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast install native lint browser js bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to 2.13.0 (a CPU wheel is available locally); install it first so that
# no other requirement can pull a different build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q "torch==2.13.0"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

# The SN layers' compiled CPU kernel (sn_core/native.py; ~20-40 s once, a no-op when built). Without
# a C++ compiler it logs one line and the layers use the Python mixture: it never fails.
native: $(STAMP)
	$(BIN)/python -m sn_core.native

install: $(STAMP) native

# The service on this machine (SQLite database, SQLite broker, local Ray): submits the MLP digits
# example over HTTP, follows it, prints the recommendation, then serves until Ctrl-C.
# `make demo DEMO_FLAGS=--exit-when-done` stops once the job has finished.
DEMO_FLAGS ?=

demo: $(STAMP) native
	$(BIN)/normsearch up --submit examples/mlp_digits.yaml $(DEMO_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser tests (tests/ui/test_ui_browser.py) drive Debian's Chromium through Playwright (no
# browser download): install it from apt when it is missing (sudo only when not root).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		$(SUDO) env $(APT_INSTALL) || { $(SUDO) apt-get update -q && $(SUDO) env $(APT_INSTALL); }; \
	fi
	@$(CHROMIUM) --version 2>/dev/null | grep -i chromium

# The web UI's JavaScript (api/ui/static; no build step, nothing of npm ships): eslint and its
# unit tests under `node --test` (tests/ui/js). npm ci installs the pinned devDependencies of
# package-lock.json, again only when node_modules is missing or older than the lock file.
# Without Node.js >= 20.19 (eslint 10's minimum) and npm this fails: CI must not skip them.
# The test files are named by a shell glob: node 21+ no longer searches a directory argument.
NODE_STAMP := node_modules/.package-lock.json
NEED_NODE = @command -v node >/dev/null && command -v npm >/dev/null || { \
		echo "make js: node and npm are missing; install Node.js >= 20.19 with npm" >&2; exit 1; }; \
	node -e 'const [a, b] = process.versions.node.split(".").map(Number); \
		process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' || { \
		echo "make js: Node.js $$(node --version) is too old; eslint needs >= 20.19" >&2; exit 1; }

$(NODE_STAMP): package.json package-lock.json
	$(NEED_NODE)
	npm ci --no-audit --no-fund
	@touch $@

js: $(NODE_STAMP)
	$(NEED_NODE)
	npx --no-install eslint api/ui/static tests/ui/js
	node --test tests/ui/js/*.test.mjs

test: lint browser js native
	$(BIN)/python -m pytest -q --durations=15

# The inner loop: lint, the JS tests and every Python test but the end-to-end and slow ones
# (markers e2e and slow: real Ray searches, Celery workers, the embedded stack, the browser).
test-fast: lint js native
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

bench: $(STAMP) native
	$(BIN)/python bench/sn_layer.py
	$(BIN)/python bench/sn_network.py
	$(BIN)/python bench/search_cost.py
	$(BIN)/python bench/trial_profile.py
	$(BIN)/python bench/search_quality.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/api_load.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache node_modules
