# The two set-up commands of README.md. Both create .venv on first use (CPU torch 2.13.0 first,
# so that pip never resolves the multi-GB CUDA build), then install the project into it.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= cpu,dev

.PHONY: install serve test

$(BIN)/asasnn: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	touch $(BIN)/asasnn

install: $(BIN)/asasnn

serve: install
	$(BIN)/asasnn serve

test: install
	$(BIN)/python -m pytest -q
