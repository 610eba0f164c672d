# Everything a fresh clone needs: `make demo` runs the main job, `make test` runs the test suite.
# `make test` also runs ruff (lint, import order) and mypy (both packages), configured in pyproject.toml.
# Both create (or reuse) the virtual environment in $(VENV), install torch pinned to the CPU wheel,
# and install this package editable without build isolation, so the extension builds against that torch.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.certunlearn-installed
TORCH_PIN := torch==2.13.0
SOURCES := pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cuda/*.cu csrc/cuda/*.cpp csrc/cuda/*.cuh)
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): $(SOURCES)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "setuptools>=64" wheel $(TORCH_PIN)
	$(PY) -m pip install -q --disable-pip-version-check --no-build-isolation -e '.[test,notebooks]'
	@touch $@

demo: $(STAMP)
	$(VENV)/bin/certunlearn demo

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -n 2 $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/bench_accountant.py
	$(PY) benchmarks/bench_step.py
	$(PY) benchmarks/bench_unlearn.py

clean:
	rm -rf $(VENV) build *.egg-info certunlearn_train/*.so
