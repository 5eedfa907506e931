# Two commands do all the set-up on a fresh machine:
#   make demo   train on the built-in demo data (if no artifact yet) and serve on localhost:8000
#   make test   run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
ARTIFACT ?= artifacts/demo
HOST ?= 127.0.0.1
PORT ?= 8000
# The demo's training is bounded so that `make demo` serves within a few minutes on 2 CPU cores;
# `make demo DEMO_TRAIN_ARGS=` trains with the full defaults (early stopping, up to 1000 epochs).
DEMO_TRAIN_ARGS ?= --epochs 30
# The CPU build of torch; GPU users install their CUDA build of torch into the venv first.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	@test -f $(ARTIFACT)/manifest.json || $(VENV)/bin/ld4mrec-train --data demo --out $(ARTIFACT) $(DEMO_TRAIN_ARGS)
	$(VENV)/bin/ld4mrec-serve --artifact $(ARTIFACT) --host $(HOST) --port $(PORT)

test: $(VENV)/.installed
	bash scripts/ci-system-deps.sh
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy model training service
