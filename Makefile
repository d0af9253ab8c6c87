# Two entry points for a fresh machine:
#   make demo   -- install into .venv, then generate digit samples from the model shipped in the package
#   make test   -- install into .venv (with dev extras), then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= outputs

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip

# torch goes in first and pinned: a bare `torch` requirement could pull a multi-GB CUDA build.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/polyscale sample --checkpoint digits2d --num-samples 16 --output-file $(OUT)/digits.png

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(VENV)/.installed-dev
	mkdir -p $(OUT)
	$(BIN)/python benchmarks/run_all.py --out BENCHMARKS.md
	$(BIN)/python benchmarks/scale.py --out $(OUT)/scale.md
	$(BIN)/python benchmarks/evaluate_shipped.py --out $(OUT)/evaluate.md
	cat $(OUT)/scale.md $(OUT)/evaluate.md >> BENCHMARKS.md

clean:
	rm -rf $(VENV) $(OUT)
