# rft-ds: `make demo` runs the embedded default, `make test` the test suite.
# Both create .venv and install what they need. On a CPU machine the venv gets the CPU build of
# torch (TORCH_SPEC); on a GPU cluster install into the environment that already has your CUDA
# torch instead: `pip install -e .` (pyproject asks for torch>=2.4, which it satisfies, so it is kept).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# DeepSpeed JIT-builds small CPU ops once; keep their cache with the venv.
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/$(VENV)/torch_extensions

.PHONY: install test demo clean

$(BIN)/rft-ds: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/rft-ds

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/demo/run.sh

clean:
	rm -rf outputs .pytest_cache
