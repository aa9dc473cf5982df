# Everything sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

LINTED := sap_jax experiments benchmarks examples tests tools

.PHONY: demo test lint format bench constraints clean

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
	rm -rf $(VENV) *.egg-info .pytest_cache
