# Each target does its own set-up on a fresh machine: a virtual environment in .venv,
# the package installed into it with the extras that target needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo lab test bench lint clean labextension jstest

# The chat's JupyterLab extension (TypeScript, jupyter_extension/), built with the jlpm of the
# JupyterLab in $(VENV) and node >= 20; rebuilt only when its sources change.
EXT := jupyter_extension
JLPM := PATH="$(abspath $(BIN)):$$PATH" nice $(abspath $(BIN))/jlpm
EXT_SOURCES := $(wildcard $(EXT)/src/*.ts $(EXT)/src/*.tsx $(EXT)/style/* $(EXT)/schema/*) \
	$(EXT)/package.json $(EXT)/yarn.lock $(EXT)/tsconfig.json $(EXT)/.yarnrc.yml
EXT_BUILT := $(EXT)/labextension/qcoder-ds/package.json
LABEXT_LINK := $(VENV)/share/jupyter/labextensions/qcoder-ds
SERVER_CONFIG := $(VENV)/etc/jupyter/jupyter_server_config.d/qcoder_ds.json

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# the package's own build inputs: pyproject.toml, and setup.py with the C kernels
PACKAGE := pyproject.toml setup.py qcoder_ds/runtime/_expert_kernel.c \
	qcoder_ds/runtime/_decode_kernel.c

$(VENV)/.base: $(PACKAGE) | $(BIN)/python
	$(BIN)/pip install -q -e '.[openvino]'
	touch $@

# CMAKE_ARGS as for bench: llama-cpp-python (the remote engine's test server) is built once
# with the same flags, and pip's wheel cache serves both targets afterwards
$(VENV)/.test: $(PACKAGE) | $(BIN)/python
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install -q -e '.[test]'
	touch $@

# what `make lab` needs: the package with OpenVINO and Jupyter (JupyterLab brings jlpm)
$(VENV)/.jupyter: $(PACKAGE) | $(BIN)/python
	$(BIN)/pip install -q -e '.[openvino,jupyter]'
	touch $@

$(VENV)/.bench: $(PACKAGE) | $(BIN)/python
	CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/pip install -q -e '.[test,bench]'
	touch $@

$(EXT)/node_modules/.installed: $(EXT)/package.json $(EXT)/yarn.lock | $(VENV)/.jupyter
	cd $(EXT) && $(JLPM) install --immutable
	touch $@

$(EXT_BUILT): $(EXT_SOURCES) $(EXT)/node_modules/.installed
	cd $(EXT) && $(JLPM) build:prod
	touch $@

# An editable install does not install data files: link the built extension and the config
# that enables the server extension where `pip install` would put them.
$(VENV)/.jupyter-dev: $(EXT_BUILT) jupyter-config/jupyter_server_config.d/qcoder_ds.json | $(VENV)/.jupyter
	rm -rf $(LABEXT_LINK) $(SERVER_CONFIG)
	mkdir -p $(dir $(LABEXT_LINK)) $(dir $(SERVER_CONFIG))
	ln -s $(abspath $(EXT)/labextension/qcoder-ds) $(LABEXT_LINK)
	ln -s $(abspath jupyter-config/jupyter_server_config.d/qcoder_ds.json) $(SERVER_CONFIG)
	touch $@

labextension: $(EXT_BUILT)

# the browser test drives Debian's Chromium (Playwright's own download cannot run here)
/usr/bin/chromium:
	-(apt-get install -y chromium || (apt-get update && apt-get install -y chromium)) \
	  || echo "no /usr/bin/chromium: the browser test will be skipped"

jstest: $(EXT)/node_modules/.installed
	cd $(EXT) && $(JLPM) test

demo: $(VENV)/.base
	$(BIN)/qcoder ask --data examples/data/sales.csv "total revenue per region as a bar chart"

lab: $(VENV)/.jupyter-dev
	$(BIN)/jupyter lab examples/copilot.ipynb

test: $(VENV)/.test $(VENV)/.jupyter-dev | /usr/bin/chromium
	$(BIN)/ruff check qcoder_ds tests benchmarks
	cd $(EXT) && $(JLPM) test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/decode.py
	$(BIN)/python benchmarks/decode.py --model qwen2.5-coder-1.5b-instruct --out benchmarks/results/decode-1.5b.json

lint: $(VENV)/.test
	$(BIN)/ruff check qcoder_ds tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info $(EXT)/node_modules $(EXT)/lib $(EXT)/labextension \
	  $(EXT)/.yarn $(EXT)/tsconfig.tsbuildinfo
