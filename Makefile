# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install lint browser bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned to 2.13.0 (a CPU wheel is available locally); install it first so that
# no other requirement can pull a different build.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --disable-pip-version-check -q "torch==2.13.0"
	$(BIN)/pip install --disable-pip-version-check -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The service on this machine (SQLite database, SQLite broker, local Ray): submits the digits
# example over HTTP, follows it, prints the recommendation, then serves until Ctrl-C.
# `make demo DEMO_FLAGS=--exit-when-done` stops once the job has finished.
DEMO_FLAGS ?=

demo: $(STAMP)
	$(BIN)/normsearch up --submit examples/digits.yaml $(DEMO_FLAGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The browser tests (tests/test_ui_browser.py) drive Debian's Chromium through Playwright (no
# browser download): install it from apt when it is missing (sudo only when not root).
CHROMIUM ?= /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

browser:
	@if [ ! -x $(CHROMIUM) ]; then \
		$(SUDO) env $(APT_INSTALL) || { $(SUDO) apt-get update -q && $(SUDO) env $(APT_INSTALL); }; \
	fi
	@$(CHROMIUM) --version 2>/dev/null | grep -i chromium

test: lint browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/sn_layer.py
	$(BIN)/python bench/sn_network.py
	$(BIN)/python bench/search_cost.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/api_load.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
