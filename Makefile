# The two commands of the README's quick start, and the floor tier CI runs beside them. Each
# creates its virtual environment on first use and reinstalls only when setup.py or the tier's
# constraints change.
#
# Two tiers (README "Supported versions"): the newest (Python >= 3.12, jax 0.12; `make demo`,
# `make test`) and the floor (Python 3.11, jax 0.10.2; `make test-floor`), each installed with
# the versions its constraints file pins: what that tier was tested with. Without a Python >= 3.12
# on the machine, `make demo` / `make test` use the floor.

# The first of $(2) that runs and is Python $(1) (a version prefix: 3.12, 3.11).
runs_as = $(firstword $(foreach p,$(2),$(if $(shell $(p) -c 'import sys; sys.exit(not "%d.%d" % sys.version_info[:2] == "$(1)")' 2>/dev/null && echo ok),$(p))))
PYENV := $(shell pyenv root 2>/dev/null)
# The newest tier's Python: 3.12 on PATH, else pyenv's; else python3 (then the floor tier).
ifeq ($(origin PYTHON),undefined)
PYTHON := $(or $(call runs_as,3.12,python3.12 $(wildcard $(PYENV)/versions/3.12*/bin/python3.12)),python3)
endif
ifeq ($(origin FLOOR_PYTHON),undefined)
FLOOR_PYTHON := $(or $(call runs_as,3.11,python3.11 $(wildcard $(PYENV)/versions/3.11*/bin/python3.11)),python3.11)
endif

NEWEST := $(shell $(PYTHON) -c 'import sys; print(int(sys.version_info >= (3, 12)))' 2>/dev/null)
VENV := .venv
CONSTRAINTS := $(if $(filter 1,$(NEWEST)),constraints/newest.txt,constraints/floor.txt)
FLOOR_VENV := .venv-floor
PYTEST_ARGS ?=

.PHONY: demo test test-all test-floor clean

# A venv of the wrong Python (an older checkout's) is made again.
$(VENV)/.python-$(NEWEST):
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: setup.py $(CONSTRAINTS) | $(VENV)/.python-$(NEWEST)
	$(VENV)/bin/python -m pip install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: setup.py $(CONSTRAINTS) | $(VENV)/.python-$(NEWEST)
	$(VENV)/bin/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $@ $(VENV)/.installed

$(FLOOR_VENV)/.installed-test: setup.py constraints/floor.txt
	rm -rf $(FLOOR_VENV)
	$(FLOOR_PYTHON) -m venv $(FLOOR_VENV)
	$(FLOOR_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(FLOOR_VENV)/bin/python -m pip install --quiet -c constraints/floor.txt -e ".[test]"
	touch $@

DEMO_WORKDIR ?= demo_workdir

# Pretrains a small ALBERT on the embedded corpus (a few minutes on a laptop CPU), then asks
# the exported model to fill a mask. Rerunning resumes from the last checkpoint.
demo: $(VENV)/.installed
	$(VENV)/bin/python -m albert_jax.main --config=configs/pretrain.py:tiny --workdir=$(DEMO_WORKDIR)
	$(VENV)/bin/python -m albert_jax.inference fill-mask --model $(DEMO_WORKDIR)/hf \
	    "The [MASK] statement is used to leave a loop early."

# Two workers: most tests are bound by XLA compiles (each takes a second core when one is idle).
# `test` is what CI runs (5-7.5 minutes on 2 cores, as fast as the machine is: docs/tests.md),
# `test-floor` the same on the floor (4-6);
# `test-all` adds the tests marked heavy (pytest.ini).
test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -q -n 2 --dist worksteal -m "not heavy" tests $(PYTEST_ARGS)

test-floor: $(FLOOR_VENV)/.installed-test
	$(FLOOR_VENV)/bin/python -m pytest -q -n 2 --dist worksteal -m "not heavy" tests $(PYTEST_ARGS)

test-all: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest -q -n 2 --dist worksteal tests $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(FLOOR_VENV) *.egg-info .pytest_cache
