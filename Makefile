# `make test` and `make bench` each create .venv when missing and install what they need.
# `make test` runs lint, the type check, the fast tier of the suite with the docstring
# examples (doctests) and the documentation build; `make docs` builds only the site, into
# docs/_build/html. `make test-slow` runs the rest: the tests marked slow and the tests
# of benchmarks/ (every benchmark at its smoke size). `make test-floor` runs the library's
# whole suite (both tiers and the doctests) at the declared minimum versions, in
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

.PHONY: test test-slow test-floor bench lint typecheck docs check-dist clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test,docs]"
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
	$(PY) -m pytest -m "not slow and not benchmarks"
	$(MAKE) docs

test-slow: $(VENV)/.test-installed
	$(PY) -m pytest -m "slow or benchmarks"

check-dist: $(VENV)/.test-installed
	PY=$(PY) bash .ci/check-dist

test-floor: $(FLOOR_VENV)/.test-installed
	JAXTRICKS_FLOOR_CONSTRAINTS=$(FLOOR_CONSTRAINTS) $(FLOOR_PY) -m pytest -m "not benchmarks"

bench: $(VENV)/.bench-installed-$(BACKEND)
	JAX_PLATFORMS=$(JAX_PLATFORMS_$(BACKEND)) $(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) benchmarks/results docs/_build
