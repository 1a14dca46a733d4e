# `make test` and `make bench` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[test]"
	touch $@

$(VENV)/.bench-installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

lint: $(VENV)/.test-installed
	$(PY) -m ruff check jaxtricks tests benchmarks

test: lint
	$(PY) -m pytest

bench: $(VENV)/.bench-installed
	$(PY) -m benchmarks $(ARGS)

clean:
	rm -rf $(VENV) benchmarks/results
