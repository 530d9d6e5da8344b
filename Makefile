# Two commands do all the set-up on a fresh machine: `make demo` (the main job, offline) and `make test`.
# Both create .venv and install the project into it the first time.

VENV ?= .venv
PYTHON ?= python3
# The CPU build of torch 2.13.0 is what we test with; an unpinned torch would pull the CUDA stack.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	mkdir -p outputs
	$(BIN)/t2v-fast generate "a panda playing guitar on times square" --model tiny-random \
		--out outputs/demo.mp4 --frames 8 --steps 20 --seed 0

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest
