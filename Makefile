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

# The server with the bundled models, plus a live synthetic DVS camera streaming into it so the
# console shows predictions (Ctrl-C stops both). `asasnn serve` alone runs just the server.
serve: install
	@$(BIN)/asasnn serve & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python -m service.client.wait http://127.0.0.1:8000/readyz 120 && \
	$(BIN)/asasnn stream synthetic --url ws://127.0.0.1:8000/ws/infer --every 5

# Lint first (seconds), then the suite.
test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q
