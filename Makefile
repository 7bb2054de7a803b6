# Each target does its own set-up on a fresh machine: a virtual environment in .venv,
# the package installed into it with the extras that target needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[openvino]'
	touch $@

$(VENV)/.test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.bench: pyproject.toml | $(BIN)/python
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install -q -e '.[test,bench]'
	touch $@

demo: $(VENV)/.base
	$(BIN)/qcoder ask --data examples/data/sales.csv "total revenue per region as a bar chart"

test: $(VENV)/.test
	$(BIN)/ruff check qcoder_ds tests benchmarks
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/decode.py

lint: $(VENV)/.test
	$(BIN)/ruff check qcoder_ds tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info
