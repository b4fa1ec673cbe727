# The two set-up commands of README.md. Both create .venv on first use (CPU torch 2.13.0 first,
# so that pip never resolves the multi-GB CUDA build), then install the project into it.
#
#   make install                    # the project + dev tools, ONNX Runtime for CPU (a base dependency)
#   make install GPU=1              # the same, ONNX Runtime swapped for onnxruntime-gpu (CUDA)
#   make install EXTRAS=gpu,dev     # the same as GPU=1 (`gpu` in EXTRAS is the switch, not a pip extra)
#
# onnxruntime and onnxruntime-gpu install into one `onnxruntime` import directory, so they must never
# share an environment: the GPU route installs the project (which pulls onnxruntime), uninstalls both
# and installs onnxruntime-gpu alone (its requirement is pyproject.toml's [tool.asasnn] onnxruntime-gpu);
# the CPU route uninstalls onnxruntime-gpu first. `pip check` then reports onnxruntime as missing on a
# GPU environment: expected, onnxruntime-gpu provides the same module.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev
GPU ?= 0

comma := ,
empty :=
space := $(empty) $(empty)
EXTRA_LIST := $(subst $(comma),$(space),$(EXTRAS))
ifneq ($(filter gpu,$(EXTRA_LIST)),)
override GPU := 1
endif
PIP_EXTRAS := $(subst $(space),$(comma),$(strip $(filter-out gpu,$(EXTRA_LIST))))
PROJECT := .$(if $(PIP_EXTRAS),[$(PIP_EXTRAS)])
FLAVOUR := $(if $(filter 1 yes true,$(GPU)),gpu,cpu)
STAMP := $(VENV)/.installed-$(FLAVOUR)
ORT_GPU := import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['tool']['asasnn']['onnxruntime-gpu'])

# Coverage per package of the project (the `asasnn serve` subprocesses of tests/deploy are not traced);
# its data file stays inside the virtual environment, out of the work tree. Tracing slows pure-Python
# hot loops (Python 3.11 has no sys.monitoring): `make test COV=` runs the suite without it.
COV ?= --cov=asasnn --cov=models --cov=service --cov=training --cov-report=term

.PHONY: install serve test gpu-check bench-peers

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
ifeq ($(FLAVOUR),gpu)
	$(BIN)/pip install --quiet -e '$(PROJECT)'
	$(BIN)/pip uninstall --quiet -y onnxruntime onnxruntime-gpu
	$(BIN)/pip install --quiet "$$($(BIN)/python -c "$(ORT_GPU)")"
else
	$(BIN)/pip uninstall --quiet -y onnxruntime-gpu
	$(BIN)/pip install --quiet -e '$(PROJECT)'
endif
	rm -f $(VENV)/.installed-cpu $(VENV)/.installed-gpu
	touch $@

install: $(STAMP)

# The server with the bundled models, plus a live synthetic DVS camera streaming into it so the
# console shows predictions (Ctrl-C stops both). `asasnn serve` alone runs just the server.
serve: install
	@$(BIN)/asasnn serve & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python -m service.client.wait http://127.0.0.1:8000/readyz 120 && \
	echo "live view: open http://127.0.0.1:8000/" && \
	$(BIN)/asasnn stream synthetic --url ws://127.0.0.1:8000/ws/infer --every 5

# Lint first (seconds), then the suite with coverage per package.
test: install
	$(BIN)/ruff check .
	COVERAGE_FILE=$(VENV)/.coverage $(BIN)/python -m pytest -q $(COV)

# On a machine with an NVIDIA GPU: its own venv (.venv-gpu), `pytest -m cuda`, the runtime benchmark on
# CUDA, results under OUT (default gpu-check-<date>); see benchmarks/gpu_check.sh and docs/performance.md.
gpu-check:
	bash benchmarks/gpu_check.sh $(OUT)

# The peer benchmark (SpikingJelly, snnTorch, Norse): their own environment (.venv-peers, never .venv),
# created or refreshed from benchmarks/peers-requirements.txt, then the benchmark in it; ARGS passed on.
bench-peers: install
	$(BIN)/python benchmarks/bench_peers.py --setup
	$(BIN)/asasnn bench peers $(ARGS)
