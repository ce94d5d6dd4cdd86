# The two commands of the README's quick start. Each creates .venv on first use
# and reinstalls only when setup.py changes.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test test-all clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(VENV)/.installed: setup.py | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: setup.py | $(PY)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@ $(VENV)/.installed

DEMO_WORKDIR ?= demo_workdir

# Pretrains a small ALBERT on the embedded corpus (a few minutes on a laptop CPU), then asks
# the exported model to fill a mask. Rerunning resumes from the last checkpoint.
demo: $(VENV)/.installed
	$(PY) -m albert_jax.main --config=configs/pretrain.py:tiny --workdir=$(DEMO_WORKDIR)
	$(PY) -m albert_jax.inference fill-mask --model $(DEMO_WORKDIR)/hf \
	    "The [MASK] statement is used to leave a loop early."

# Two workers: most tests are bound by single-threaded XLA compiles. `test` is what CI runs
# (4-5 minutes on 2 cores); `test-all` adds the tests marked heavy (pytest.ini).
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist worksteal -m "not heavy" tests $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist worksteal tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
