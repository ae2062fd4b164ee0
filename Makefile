# The two commands of the quick start: `make demo` and `make test`.
# Each creates .venv with the package and its dependencies on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/overfit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

.PHONY: demo test lint bench
demo: $(BIN)/overfit  ## run every scenario -> plots/<scenario>/ and plots/index.html
	$(BIN)/overfit gallery --scenarios scenarios --out plots --force

test: $(BIN)/overfit  ## the test suite (per-test timeout from pyproject.toml)
	$(BIN)/pytest

lint: $(BIN)/overfit
	$(BIN)/ruff check .

bench: $(BIN)/overfit
	$(BIN)/python benchmarks/bench_mlp.py
