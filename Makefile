# Everything sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

LINTED := sap_jax experiments benchmarks examples tests tools

.PHONY: demo test test-newest lint format bench constraints clean

# The install is pinned by constraints.txt: the package versions the suite last passed
# with (setup.cfg keeps lower bounds only). `make constraints` re-pins it.
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## noisy digits → SAP → clean retrain, printed as a table
	$(PY) -m sap_jax demo

test: $(VENV)/.installed  ## the whole test suite
	$(PY) -m pytest -q

# The newest releases, unpinned, on the newest Python the suite is tested on (jax ≥ 0.11
# needs Python ≥ 3.12): what a new user gets from `pip install`. Upgraded on every run.
NEWEST_PYTHON ?= python3.12
NEWEST_VENV ?= .venv-newest

test-newest:  ## the whole test suite on the newest releases of every dependency (.venv-newest)
	test -x $(NEWEST_VENV)/bin/python || $(NEWEST_PYTHON) -m venv $(NEWEST_VENV)
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NEWEST_VENV)/bin/python -m pip install --quiet --upgrade --upgrade-strategy eager -e '.[test]'
	$(NEWEST_VENV)/bin/python -m pip list --format=freeze | grep -iE '^(jax|jaxlib|flax|optax|orbax-checkpoint|numpy)=='
	$(NEWEST_VENV)/bin/python -m pytest -q

lint: $(VENV)/.installed  ## ruff format --check and ruff check (rules in pyproject.toml)
	$(PY) -m ruff format --check $(LINTED)
	$(PY) -m ruff check $(LINTED)

format: $(VENV)/.installed  ## apply ruff format and ruff's safe fixes
	$(PY) -m ruff format $(LINTED)
	$(PY) -m ruff check --fix $(LINTED)

constraints: $(VENV)/.installed  ## re-pin constraints.txt to the versions installed in .venv now
	$(PY) -m pip freeze --exclude-editable | grep -v '^sap-jax' > constraints.txt

bench: $(VENV)/.installed  ## benchmark of the SAP correction (add ARGS=--quick)
	$(PY) benchmarks/bench_sap.py $(ARGS)

clean:
	rm -rf $(VENV) $(NEWEST_VENV) *.egg-info .pytest_cache
