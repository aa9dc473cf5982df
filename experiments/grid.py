"""The grid of a config: its cells and their stable keys.

A *cell* is one (setup, noise, variant, seed, method). Cells that differ only in
the method share one *vanilla run*: the model trained on the noisy labels,
identified by its ``sap_jax.spec.RunSpec``. Keys are a readable name plus a
short hash of the content, so they are stable across processes and configs:

* vanilla key ``digits-cnn-symmetric0.25-s12484-<10 hex>``: hash of the
  RunSpec (data, noise, model, training recipe incl. seed; ``data_root`` is
  left out so moving the data keeps the key). The vanilla checkpoint lives at
  ``<checkpoint_dir>/<vanilla key>`` and is shared by every config and method.
* cell key ``<vanilla key>--sap-<8 hex>``: adds the method name and kwargs
  (not the table label, so renaming a row never reruns anything).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterator
from typing import Any

from experiments.config import Config, MethodSpec, Setup, Variant
from sap_jax.spec import RunSpec
from sap_jax.train import TrainConfig

__all__ = ["Cell", "expand", "groups", "method_key", "run_spec", "vanilla_key"]


@dataclasses.dataclass(frozen=True)
class Cell:
  """One run of one method on one vanilla model.

  Attributes:
    setup, noise, variant, seed, method: the grid coordinates.
    spec: the vanilla run (rebuilds data, noise and model).
    vanilla_key: the key of the vanilla checkpoint.
    key: the cell's record name, ``cells/<key>.json``.
  """

  setup: Setup
  noise: str
  variant: Variant
  seed: int
  method: MethodSpec
  spec: RunSpec
  vanilla_key: str
  key: str

  def field(self, name: str) -> str:
    """The display value of a table field ("method", "setup", "noise", ...)."""
    if name == "method":
      return self.method.display
    if name == "variant":
      return self.variant.label
    if name == "setup":
      return self.setup.label or self.setup.dataset
    if name == "noise":
      return pretty_noise(self.noise)
    if name == "model":
      return self.setup.model
    if name == "dataset":
      return self.setup.dataset
    raise ValueError(f"Unknown cell field {name!r}.")


def pretty_noise(noise: str) -> str:
  """'symmetric:0.25' → 'Sym-25%', 'asymmetric:0.1' → 'Asym-10%'."""
  kind, _, rest = noise.partition(":")
  short = {"symmetric": "Sym", "asymmetric": "Asym", "hierarchical": "Hier"}
  if kind in short:
    try:
      return f"{short[kind]}-{100 * float(rest.split(':')[0]):g}%"
    except ValueError:
      pass
  if kind == "human":
    return f"human ({rest})"
  return noise


def _hash(obj: Any, n: int) -> str:
  text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:n]


def _slug(text: str) -> str:
  return re.sub(r"[^A-Za-z0-9.]+", "", text.replace(":", "")) or "x"


def run_spec(config: Config, setup: Setup, noise: str, variant: Variant, seed: int) -> RunSpec:
  """The vanilla run: shared train fields ← setup's ← variant's, then the seed."""
  fields = {**config.train, **setup.train, **variant.train, "seed": int(seed)}
  return RunSpec(
    dataset=setup.dataset,
    noise=noise,
    model=setup.model,
    seed=int(seed),
    val_fraction=setup.val_fraction,
    data_root=setup.data_root,
    data_options=dict(setup.data_options),
    model_kwargs=dict(setup.model_kwargs),
    train=TrainConfig(**fields),
    init_from=setup.init_from,
  )


def vanilla_key(spec: RunSpec) -> str:
  """Readable name + hash of the RunSpec (without ``data_root``; of ``init_from``, only
  the file name, so the key does not depend on where the weights are stored)."""
  content = spec.to_dict()
  content.pop("data_root", None)
  if "init_from" in content:
    content["init_from"] = os.path.basename(content["init_from"].rstrip("/"))
  name = f"{_slug(spec.dataset)}-{_slug(spec.model)}-{_slug(spec.noise)}-s{spec.seed}"
  return f"{name}-{_hash(content, 10)}"


def method_key(method: MethodSpec) -> str:
  """Method name + hash of its kwargs."""
  return f"{_slug(method.name)}-{_hash({'name': method.name, 'kwargs': dict(method.kwargs)}, 8)}"


def expand(config: Config) -> list[Cell]:
  """All cells, ordered setup → noise → variant → seed → method.

  Cells of one vanilla run are consecutive, so each vanilla model is trained
  (or loaded) once and every method runs on it in turn.

  Raises:
    ValueError: two cells with one key (e.g. the same method and kwargs
      listed twice under different labels).
  """
  cells, seen = [], {}
  for setup in config.setups:
    for noise in config.noises:
      for variant in config.variants:
        for seed in config.seeds:
          spec = run_spec(config, setup, noise, variant, seed)
          vkey = vanilla_key(spec)
          for method in config.methods:
            key = f"{vkey}--{method_key(method)}"
            if key in seen:
              raise ValueError(
                f"Cells {seen[key]!r} and {method.display!r} of {vkey} are identical "
                "(same method and kwargs); remove one."
              )
            seen[key] = method.display
            cells.append(Cell(setup, noise, variant, int(seed), method, spec, vkey, key))
  return cells


def groups(cells: list[Cell]) -> Iterator[tuple[str, list[Cell]]]:
  """``(vanilla_key, cells)`` runs of consecutive cells sharing a vanilla model."""
  current, batch = None, []
  for cell in cells:
    if cell.vanilla_key != current and batch:
      yield current, batch
      batch = []
    current = cell.vanilla_key
    batch.append(cell)
  if batch:
    yield current, batch
