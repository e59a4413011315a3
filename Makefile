# dphrl-mini: `make demo` runs the main job on CPU, `make test` runs every test and notebook.
# Both create the virtual environment first (.venv) if it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Small notebook settings for the test run; unset (or DPHRL_SMALL=0) for full settings.
NB_TIMEOUT ?= 900
# One BLAS/OpenMP thread per process for the tests: the tiny model gains nothing from more, and
# tests that start several processes (DDP, kill-and-resume) would oversubscribe a small CPU.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

.PHONY: setup demo test unit notebooks render lab bench gpu-check clean

setup: $(VENV)/.installed

# torch: take 2.13.0 when the machine offers it (a local CPU wheel), else whatever pip resolves.
# The project's own requirement stays loose (torch>=2.1) so Colab's preinstalled torch is kept.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0" || $(PY) -m pip install -q torch
	$(PY) -m pip install -q -e ".[dev,data,bench]"
	touch $@

demo: setup
	$(VENV)/bin/dphrl-mini demo

unit: setup
	$(TEST_ENV) $(PY) -m pytest -q -p no:cacheprovider tests

notebooks: setup
	$(TEST_ENV) DPHRL_SMALL=$${DPHRL_SMALL:-1} MPLBACKEND=Agg $(PY) -m pytest -q -p no:cacheprovider --nbmake --nbmake-timeout=$(NB_TIMEOUT) notebooks

test: unit notebooks

# Re-execute every notebook in place with full settings (stored results for 04/05; 06 takes its GPU
# path where there is one), after adding cell ids, the Colab badge and install cell; then commit them.
render: setup
	PYTHONPATH=$(CURDIR) $(PY) tools/render_notebooks.py

lab: setup
	$(PY) -m pip install -q -e ".[lab]"
	$(VENV)/bin/jupyter lab notebooks

bench: setup
	$(PY) benchmarks/bench_optimal_policy.py
	$(PY) benchmarks/bench_trl.py --device cpu
	$(PY) benchmarks/bench_tiny_build.py
	$(PY) benchmarks/bench_shares.py

# GPU acceptance (benchmarks/README.md): no setup step, since the GPU machine has no network; its own python
# (with the wheels carried in .whl/) unless this checkout has a virtual environment. Its CPU dry run is a unit test.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
GPU_OUT ?= runs/gpu_acceptance
gpu-check:
	$(GPU_PY) benchmarks/gpu_acceptance.py --out $(GPU_OUT)

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
