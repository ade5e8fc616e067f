PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: venv install install-test demo test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(BIN)/python
	$(PIP) install -q -e .

install-test: $(BIN)/python
	$(PIP) install -q -e '.[test]'

demo: install
	$(BIN)/tracin-jax demo --out runs/demo

test: install-test
	$(BIN)/python -m pytest -q -n 2 tests

clean:
	rm -rf runs .pytest_cache
