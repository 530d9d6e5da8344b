# Two commands do all the set-up on a fresh machine: `make demo` (the main job, offline) and `make test`.
# Both create .venv and install the project into it the first time.

VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch 2.13.0 is what we test with; an unpinned torch would pull the CUDA stack.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format screenshots system-packages

# setuptools notes every editable install ("Editable installation ... be careful with folders"): nothing to act on,
# so it is silenced and the install stays quiet.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p outputs
	$(BIN)/t2v-fast generate "a panda playing guitar on times square" --model tiny-random \
		--out outputs/demo.mp4 --frames 8 --steps 20 --seed 0

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Real parts the tests use from Debian: a PostgreSQL server (the Prefect server's production database) and Chromium
# (the web app's browser test). Root installs what is missing; anyone else gets those tests skipped with a message.
system-packages:
	@missing=""; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "note: not installed ($$missing): the tests that need them will be skipped"; fi

test: lint system-packages
	$(BIN)/python -m pytest

# The quicker loop, no real servers, minutes: everything but the slow tests and those that start a server (the Prefect
# cluster's servers, workers and PostgreSQL: `integration`; Prefect's test API and the web app's server: `server`).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow and not integration and not server"

# Refresh the README's pictures of the web app (tests alone never write into the tree).
screenshots: $(STAMP) system-packages
	T2V_FAST_SCREENSHOTS=docs $(BIN)/python -m pytest tests/test_app.py -k real_browser
