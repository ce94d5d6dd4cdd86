# The two commands of the README's quick start. Each creates .venv on first use
# and reinstalls only when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m experiments.demo_convert

test: $(VENV)/.installed-test
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
