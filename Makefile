# Set-up and common jobs. Everything lives in .venv; torch is installed first
# and pinned by a constraints file, otherwise pip swaps in a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION := 2.13.0
CONSTRAINTS := $(VENV)/constraints.txt
EXTRAS ?= dev,scan,ray,eval,demo,serve
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install demo lint test bench bench-gpu clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	echo "torch==$(TORCH_VERSION)" > $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]"
	# The original LLaVA code, the oracle of tests/fidelity; --no-deps: its pins (torch 2.1, transformers 4.37) are not wanted.
	$(PIP) install -q --no-deps llava-torch==1.2.2.post1
	@! $(PY) -c "import importlib.util,sys; sys.exit(0 if importlib.util.find_spec('torchvision') or importlib.util.find_spec('timm') else 1)" \
		|| (echo "torchvision/timm got installed: they break transformers here" && exit 1)
	touch $(STAMP)

demo: install
	$(VENV)/bin/safevlm demo

# ruff (lint + format check) and mypy on the modules listed in pyproject.toml ([tool.mypy] files).
lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: install lint
	$(PY) -m pytest -q

bench: install
	$(PY) bench/gate_overhead.py
	$(PY) bench/scan_throughput.py
	$(PY) bench/stage1_step_time.py 10

# One GPU, about 8 minutes: device-sensitive tests on CUDA, gate overhead, scan, training step (see docs/benchmarks.md).
bench-gpu: install
	$(PY) bench/gpu_suite.py

clean:
	rm -rf $(VENV) build *.egg-info
