"""What an experiment is, and how config files are loaded and overridden.

A config file is a Python module in ``experiments/configs/`` whose docstring
holds the exact command that runs it and what it reproduces, and whose
``get_config()`` returns a :class:`Config` (big_vision / flax-examples style).
Variants import a base config and override a few fields with
``dataclasses.replace``::

    from experiments.configs import table1

    def get_config():
      return dataclasses.replace(table1.get_config(), name="x", seeds=(0,))

The grid a config spans is ``setups × noises × variants × seeds × methods``
(:mod:`experiments.grid`). Everything is plain frozen dataclasses of JSON-ready
values, so a config serialises with :func:`to_dict` and hashes stably.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sap_jax import jsonio

__all__ = [
  "Config",
  "MethodSpec",
  "Setup",
  "TableSpec",
  "Variant",
  "apply_overrides",
  "load_config",
  "to_dict",
]

PAPER_SEEDS = (12484, 32087, 35416)
"""The paper's three seeds."""

METHOD_LABELS = {
  "vanilla": "Vanilla",
  "sap": "SAP",
  "retrain": "Retrain",
  "finetune": "Finetune",
  "ssd": "SSD",
  "scrub": "SCRUB",
  "cleaning": "Cleaning (CL)",
}
"""Table row names of the registered methods (the paper's spelling)."""

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclasses.dataclass(frozen=True)
class Setup:
  """A data set, the model trained on it, and that model's training recipe.

  Attributes:
    dataset: a ``sap_jax.data`` name ("digits", "mnist1d", "cifar10", ...).
    model: a ``sap_jax.models`` name ("cnn", "cnn1d", "vgg11", ...).
    model_kwargs: model hyperparameters (e.g. ``{"width": 32}``).
    train: ``TrainConfig`` fields for this setup, applied over
      ``Config.train`` (e.g. its own epochs).
    data_root: folder or file of on-disk data sets (CIFAR, image folders);
      ``--data-root`` on the command line sets it for every setup.
    data_options: extra ``load_dataset`` options (e.g. ``{"num_samples": 200}``).
    val_fraction: share of the noisy training set held out for choosing
      hyperparameters (α).
    init_from: pretrained weights the vanilla model starts from (``RunSpec.init_from``:
      e.g. a torchvision-converted ``.npz``); None: random initialisation.
    label: column name in tables (default: the data set, plus the model when
      several setups share a data set).
  """

  dataset: str
  model: str
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  data_root: str | None = None
  data_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  val_fraction: float = 0.1
  label: str = ""
  init_from: str | None = None


@dataclasses.dataclass(frozen=True)
class Variant:
  """A way of training the vanilla model (Table 2: noise-robust training).

  Attributes:
    label: row/column name ("ERM", "MixUp", "SAM", ...).
    train: ``TrainConfig`` fields it changes (e.g. ``{"mixup_alpha": 0.2}``).
  """

  label: str = "ERM"
  train: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """A correction method of ``sap_jax.baselines`` with its settings.

  Attributes:
    name: a ``sap_jax.baselines.known_methods()`` name.
    kwargs: keyword arguments of its factory (``get_method(name, **kwargs)``).
    label: row name in tables (default: the paper's name, e.g. "SAP").
  """

  name: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  label: str = ""

  @property
  def display(self) -> str:
    """The label, or the paper's name of the method."""
    return self.label or METHOD_LABELS.get(self.name, self.name)


@dataclasses.dataclass(frozen=True)
class TableSpec:
  """How records become the results table.

  Attributes:
    rows: cell fields whose values name a row: any of "method", "variant",
      "setup", "noise", "model", "dataset".
    columns: cell fields whose values name a column.
    metric: the record field tabulated (as a percentage).
    reference_rows: rows shown but never bolded (Retrain knows the clean
      labels; the oracle-α rows read the clean validation labels).
    oracle_rows: add a "<SAP label> (oracle α)" row per SAP method: the test
      accuracy at the α that is best on the CLEAN validation labels (the
      published code's protocol), beside the honest noisy-validation choice.
    average: add an "Avg." column (mean of the column means).
    delta: ``(from, to)`` method labels, e.g. ``("Vanilla", "SAP")``: add a
      "Δ" column after each ``to`` column with the mean ± std of the paired
      per-seed gain ``to − from`` on the same vanilla model.
  """

  rows: tuple[str, ...] = ("method",)
  columns: tuple[str, ...] = ("setup", "noise")
  metric: str = "test_accuracy"
  reference_rows: tuple[str, ...] = ("Retrain", "SAP (oracle α)")
  oracle_rows: bool = True
  average: bool = True
  delta: tuple[str, str] | None = None


@dataclasses.dataclass(frozen=True)
class Config:
  """One experiment: a grid of cells, how to tabulate it, which plots to draw.

  Attributes:
    name: the results folder name (``experiments/results/<name>/``).
    description: one line for the table's title.
    version: bump when a change makes old records wrong (the runner refuses a
      workdir holding records of another version).
    setups: data set × model × recipe entries.
    noises: label-noise specs ("symmetric:0.25", "asymmetric:0.1", "none", ...).
    seeds: seeds of noise, split, training and methods.
    train: ``TrainConfig`` fields shared by every setup.
    variants: training variants (default: plain ERM only).
    methods: the methods run on every vanilla model.
    table: how the table is built.
    plots: names of :mod:`experiments.plots` functions to draw.
    oracle: for SAP methods, also choose α on the clean validation labels.
    alpha_curve: for SAP methods, record test/val accuracy at every α.
    record_spectra: for SAP methods, record each layer's normalised spectrum.
    save_variables: method labels whose corrected variables are saved to
      ``<checkpoint_dir>/corrected/<cell key>`` (for plots).
  """

  name: str
  setups: tuple[Setup, ...]
  noises: tuple[str, ...]
  methods: tuple[MethodSpec, ...]
  description: str = ""
  version: int = 1
  seeds: tuple[int, ...] = PAPER_SEEDS
  train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  variants: tuple[Variant, ...] = (Variant(),)
  table: TableSpec = TableSpec()
  plots: tuple[str, ...] = ()
  oracle: bool = True
  alpha_curve: bool = True
  record_spectra: bool = False
  save_variables: tuple[str, ...] = ()

  def __post_init__(self):
    for name in ("setups", "noises", "methods", "seeds", "variants"):
      value = getattr(self, name)
      if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"Config.{name} must be a non-empty sequence, got {value!r}.")
      object.__setattr__(self, name, tuple(value))
    if not self.name or "/" in self.name:
      raise ValueError(f"Config.name must be a non-empty folder name, got {self.name!r}.")
    for f in ("rows", "columns"):
      bad = set(getattr(self.table, f)) - set(CELL_FIELDS)
      if bad:
        raise ValueError(f"TableSpec.{f} has unknown fields {sorted(bad)}; use {CELL_FIELDS}.")


CELL_FIELDS = ("method", "variant", "setup", "noise", "model", "dataset")
"""Cell attributes a table can group by."""


def to_dict(config: Config) -> dict[str, Any]:
  """The config as JSON-ready nested dicts and lists."""
  return jsonio.to_jsonable(config)


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def load_config(ref: str | Path) -> tuple[Config, Any]:
  """Loads a config file.

  Args:
    ref: a path to a ``.py`` config file, or the name of a module in
      ``experiments/configs`` ("table1"), or a dotted module path.

  Returns:
    ``(config, module)``.
  """
  ref = str(ref)
  path = Path(ref)
  if path.suffix == ".py":
    if not path.is_file():
      raise FileNotFoundError(f"No config file {ref}.")
    path = path.resolve()
    if path.parent == CONFIG_DIR:
      module = importlib.import_module(f"experiments.configs.{path.stem}")
    else:
      name = f"_experiment_config_{path.stem}"
      spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(spec)
      sys.modules[name] = module
      spec.loader.exec_module(module)
  else:
    dotted = ref if "." in ref else f"experiments.configs.{ref}"
    try:
      module = importlib.import_module(dotted)
    except ModuleNotFoundError as e:
      known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("[!_]*.py")))
      raise ValueError(f"No config {ref!r}; pass a .py path or one of: {known}.") from e
  if not hasattr(module, "get_config"):
    raise ValueError(f"Config module {module.__name__} has no get_config().")
  config = module.get_config()
  if not isinstance(config, Config):
    raise ValueError(
      f"{module.__name__}.get_config() returned {type(config).__name__}, "
      "expected experiments.config.Config."
    )
  return config, module


# ---------------------------------------------------------------------------
# Command-line overrides.
# ---------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
  try:
    value = json.loads(text)
  except json.JSONDecodeError:
    return text
  return value


def _tuples(value: Any) -> Any:
  return tuple(value) if isinstance(value, list) else value


def apply_overrides(config: Config, overrides: Sequence[str]) -> Config:
  """Applies ``KEY=VALUE`` overrides (VALUE parsed as JSON, else a string).

  Keys:
    * a top-level field: ``seeds=[0]``, ``noises=["symmetric:0.25"]``,
      ``name=smoke``;
    * ``train.<field>``: a shared ``TrainConfig`` field (``train.epochs=1``);
    * ``setup.<field>`` or ``setup.<dict field>.<key>``: every setup
      (``setup.data_root=/data/cifar``, ``setup.data_options.num_samples=200``,
      ``setup.train.epochs=1``);
    * ``method.<name or label>.<kwarg>``: the kwargs of matching methods
      (``method.sap.n_trusted=100``).
  """
  for item in overrides:
    if "=" not in item:
      raise ValueError(f"Override {item!r} is not KEY=VALUE.")
    key, text = item.split("=", 1)
    value = _parse_value(text)
    parts = key.strip().split(".")
    head = parts[0]
    if head == "train" and len(parts) == 2:
      config = dataclasses.replace(config, train={**config.train, parts[1]: value})
    elif head == "setup" and len(parts) in (2, 3):
      setups = []
      for s in config.setups:
        if len(parts) == 2:
          if parts[1] not in {f.name for f in dataclasses.fields(Setup)}:
            raise ValueError(f"Override {item!r}: Setup has no field {parts[1]!r}.")
          setups.append(dataclasses.replace(s, **{parts[1]: _tuples(value)}))
        else:
          current = getattr(s, parts[1], None)
          if not isinstance(current, Mapping):
            raise ValueError(f"Override {item!r}: Setup.{parts[1]} is not a dict field.")
          setups.append(dataclasses.replace(s, **{parts[1]: {**current, parts[2]: value}}))
      config = dataclasses.replace(config, setups=tuple(setups))
    elif head == "method" and len(parts) == 3:
      hit, methods = False, []
      for m in config.methods:
        if parts[1] in (m.name, m.label, m.display):
          hit = True
          m = dataclasses.replace(m, kwargs={**m.kwargs, parts[2]: value})
        methods.append(m)
      if not hit:
        raise ValueError(f"Override {item!r}: no method named {parts[1]!r}.")
      config = dataclasses.replace(config, methods=tuple(methods))
    elif len(parts) == 1 and head in {f.name for f in dataclasses.fields(Config)}:
      config = dataclasses.replace(config, **{head: _tuples(value)})
    else:
      raise ValueError(f"Override key {key!r} not understood; see apply_overrides' docstring.")
  return config
