"""Experiments: config files plus one runner.

    python -m experiments.run experiments/configs/table1.py

* :mod:`experiments.config` — what an experiment is (the dataclasses a config
  file's ``get_config()`` returns) and how config files are loaded/overridden.
* :mod:`experiments.grid` — the grid of cells and their stable keys.
* :mod:`experiments.run` — the runner: vanilla checkpoints, methods, records.
* :mod:`experiments.oracle` — SAP's oracle α (clean validation labels), α curve, spectra.
* :mod:`experiments.tables` — mean ± std tables (markdown, CSV) from records.
* :mod:`experiments.plots` — α curve, N_trust, spectra, decision boundaries.
* ``experiments/configs/`` — one file per table/ablation; its docstring holds
  the command that runs it.
* ``experiments/results/<config>/`` — committed records, tables and plots.
"""
