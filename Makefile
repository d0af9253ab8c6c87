# Two entry points for a fresh machine (each creates .venv/ and installs what it needs):
#   make demo        -- install, then sample the models shipped in the package: 16 digits, a texture 4x the size
#                       of its training crops and slices of a porous volume 2x its training size (outputs/)
#   make test        -- install with the dev extras, then run the whole test suite (prints the slowest tests)
# and, once installed:
#   make test-fast   -- the suite without the tests marked `long` (each slower than about 5 s)
#   make lint        -- ruff (check + format check) and mypy
#   make bench       -- the quick benchmark sections, rewritten into BENCHMARKS.md (see benchmarks/run_all.py)
#
# What gets downloaded: torch==2.13.0 first (scripts/install_torch.sh), then the package's dependencies from
# PyPI (numpy, scipy, scikit-learn, scikit-image, matplotlib, accelerate, torch_geometric, tensorboard, ...,
# a few hundred MB); `make test` adds the dev extras (pytest, ruff, mypy, diffusers, transformers, POT, ...).
# TORCH_INDEX picks torch's wheel index:
#   auto (default)  no nvidia-smi: the CPU build from download.pytorch.org/whl/cpu (about 200 MB), falling back
#                   to PyPI when that index cannot be reached; with nvidia-smi: PyPI (the CUDA build, several GB)
#   cpu             the CPU index (same fallback)
#   cuda or pypi    PyPI, whatever the machine (on Linux the CUDA build)
#   <url>           that index URL, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu126
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= outputs
TORCH_INDEX ?= auto

.PHONY: demo test test-fast lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch goes in first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml scripts/install_torch.sh
	bash scripts/install_torch.sh $(BIN)/pip $(TORCH_INDEX)
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/polyscale sample --checkpoint digits2d --num-samples 16 --output-file $(OUT)/digits.png
	$(BIN)/polyscale sample --checkpoint texture2d --resolution 128 --num-samples 1 --output-file $(OUT)/texture_4x.png
	$(BIN)/polyscale sample --checkpoint porous3d --resolution 64 --num-samples 1 --output-file $(OUT)/porous_2x.png
	@echo "demo: $(OUT)/digits.png, $(OUT)/texture_4x.png (4x the training crops), $(OUT)/porous_2x.png (slices; volume in .npy)"

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q --durations=15

test-fast: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q -m "not slow and not long"

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src/polyscale

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) $(OUT)
