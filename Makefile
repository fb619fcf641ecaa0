# One place for setting up and running. `make demo` and `make test` create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU machines: a pinned CPU wheel (on this workplace's machines pip takes it from disk in seconds).
# GPU machines: install your CUDA build of torch into .venv first, or pass TORCH='torch' (or an index URL);
# setup skips torch when the venv already imports one.
TORCH ?= torch==2.13.0

.PHONY: setup demo test lint bench-detection clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/muvo-doctor demo

test: setup
	$(PY) -m pytest

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

bench-detection: setup
	$(PY) bench/detection.py

clean:
	rm -rf $(VENV) runs
