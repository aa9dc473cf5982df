# Everything sets up its own virtual environment in .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench experiments clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed  ## noisy digits → SAP → clean retrain, printed as a table
	$(PY) -m sap_jax demo

test: $(VENV)/.installed  ## the whole test suite
	$(PY) -m pytest -q

bench: $(VENV)/.installed  ## benchmark of the SAP correction (add ARGS=--quick)
	$(PY) benchmarks/bench_sap.py $(ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
