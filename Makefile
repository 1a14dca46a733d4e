# `make test` and `make bench` each create .venv when missing and install what they need.
# `make test` runs lint, the type check, the fast tier of the library's suite (tests/) with
# the docstring examples (doctests) and the documentation build; `make docs` builds only
# the site, into docs/_build/html. `make test-slow` runs the rest of the library's suite:
# the tests marked slow. `make test-bench` installs the bench extra too and runs the tests
# of benchmarks/ (benchmarks/tests: every benchmark at its smoke size). `make test-floor`
# runs the fast tier and the doctests again at the declared minimum versions, in
# .venv-floor.
# `make check-dist` builds the sdist and wheel, runs twine check and imports the installed
# wheel in fresh venvs (.ci/check-dist).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FLOOR_VENV := .venv-floor
FLOOR_PY := $(FLOOR_VENV)/bin/python
FLOOR_CONSTRAINTS := .ci/constraints-floor.txt

# The JAX build that `make bench` installs: detected by benchmarks/_backend.py (CUDA where
# nvidia-smi lists a GPU, TPU on a TPU VM, CPU elsewhere) unless given: `make bench BACKEND=cpu`.
BACKENDS := cpu cuda12 cuda13 tpu
ifeq ($(origin BACKEND), undefined)
BACKEND := $(shell $(PYTHON) benchmarks/_backend.py)
endif
ifeq ($(filter $(BACKEND),$(BACKENDS)),)
$(error BACKEND must be one of $(BACKENDS), got '$(BACKEND)')
endif
comma := ,
BENCH_EXTRAS := bench$(if $(filter-out cpu,$(BACKEND)),$(comma)$(BACKEND))
# JAX_PLATFORMS makes JAX fail loudly instead of falling back to the CPU.
JAX_PLATFORMS_cpu := cpu
JAX_PLATFORMS_cuda12 := cuda
JAX_PLATFORMS_cuda13 := cuda
JAX_PLATFORMS_tpu := tpu

.PHONY: test test-slow test-bench test-floor floor-venv bench bench-full lint typecheck docs check-dist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,docs]"
	touch $@

$(VENV)/.bench-test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

$(VENV)/.bench-installed-$(BACKEND): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[$(BENCH_EXTRAS)]"
	touch $@

$(FLOOR_PY):
	$(PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_PY) -m pip install -q --upgrade pip

$(FLOOR_VENV)/.test-installed: pyproject.toml $(FLOOR_CONSTRAINTS) | $(FLOOR_PY)
	$(FLOOR_PY) -m pip install -q -c $(FLOOR_CONSTRAINTS) -e ".[test]"
	touch $@

lint: $(VENV)/.test-installed
	$(PY) -m ruff check .

typecheck: $(VENV)/.test-installed
	$(PY) -m mypy

docs: $(VENV)/.test-installed
	$(PY) -m sphinx -W --keep-going -q -j auto -b html docs docs/_build/html

test: lint typecheck
	$(PY) -m pytest -m "not slow"
	$(MAKE) docs

test-slow: $(VENV)/.test-installed
	$(PY) -m pytest -m slow

test-bench: $(VENV)/.bench-test-installed
	$(PY) -m pytest benchmarks/tests

check-dist: $(VENV)/.test-installed
	PY=$(PY) bash .ci/check-dist

# The floor venv alone (CI installs it while the slow tier runs).
floor-venv: $(FLOOR_VENV)/.test-installed

test-floor: $(FLOOR_VENV)/.test-installed
	JAXTRICKS_FLOOR_CONSTRAINTS=$(FLOOR_CONSTRAINTS) $(FLOOR_PY) -m pytest -m "not slow"

# `make bench`, the main job: every benchmark at the quick size (about 8 minutes on 2 CPU
# cores); `make bench-full`: the full size, the figures of the README (about 1.5 hours).
# ARGS goes to the runner: `make bench ARGS="losses --tag bf16"`.
bench: $(VENV)/.bench-installed-$(BACKEND)
	JAX_PLATFORMS=$(JAX_PLATFORMS_$(BACKEND)) $(PY) -m benchmarks --size quick $(ARGS)

bench-full: $(VENV)/.bench-installed-$(BACKEND)
	JAX_PLATFORMS=$(JAX_PLATFORMS_$(BACKEND)) $(PY) -m benchmarks --size full $(ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) benchmarks/results docs/_build
