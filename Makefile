# recbench: `make bench` and `make test` do all set-up on a fresh machine.
#
# The environment is a virtualenv in .venv. PyTorch is installed first and explicitly:
# a bare `torch` requirement pulls a multi-GB CUDA build, which a CPU-only machine does
# not want. Where `nvidia-smi` exists the CUDA builds of torch and JAX are installed;
# otherwise torch==2.13.0 (CPU) and CPU jaxlib. Override with e.g.
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124" EXTRAS=dev,cuda
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HAVE_NVIDIA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo yes)
ifeq ($(HAVE_NVIDIA),yes)
TORCH_SPEC ?= torch
EXTRAS ?= dev,cuda
else
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= dev,dist
endif
# TorchRec for the sharded-table points, installed without its `fbgemm-gpu` (CUDA) dependency
# when the `dist` extra brings fbgemm-gpu-cpu (pyproject.toml, [dist]).
TORCHREC_SPEC ?= torchrec==1.8.0
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))
SUITE ?= auto
OUT ?= results
PYTEST_ARGS ?=

.PHONY: install test bench mutants lint format clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	$(if $(findstring dist,$(EXTRAS)),$(BIN)/python -m pip install -q --no-deps $(TORCHREC_SPEC))
	@touch $@

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The default suite for this machine (quick on a CPU, standard with a GPU or TPU), then the
# figures and the HTML report of that run; the last line printed is the report's path.
bench: $(STAMP)
	$(BIN)/recbench run --suite $(SUITE) --out $(OUT) --report

# Planted breaks (tests/mutants/*.patch) that the tests must catch; a few minutes.
mutants: $(STAMP)
	$(BIN)/python tests/mutants/run.py

lint: $(STAMP)
	$(BIN)/ruff check .

format: $(STAMP)
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
