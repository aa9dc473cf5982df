"""What a run is: data, noise, model and training settings, rebuildable from JSON.

A `RunSpec` is stored in every checkpoint's metadata, so a later `correct` or
`evaluate` rebuilds exactly the same noisy splits and model from the checkpoint
alone: data → noise → train → (checkpoint) → SAP → evaluate.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from sap_jax import data, models
from sap_jax.noise import NoiseSpec
from sap_jax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything needed to rebuild a training run's data and model.

  Attributes:
    dataset: a name from `sap_jax.data.known_datasets()` (e.g. "digits").
    noise: label-noise spec string ("symmetric:0.25", "asymmetric:0.1",
      "human:worse", "none").
    model: a name from `sap_jax.models.known_models()`.
    seed: seeds the noise, the validation split and training.
    val_fraction: share of the noisy training set held out for validation.
    data_root: folder or file for datasets read from disk (CIFAR, npz, folder).
    data_options: extra `load_dataset` options.
    model_kwargs: extra `models.get` keyword arguments.
    train: the training configuration.
  """

  dataset: str = "digits"
  noise: str = "symmetric:0.25"
  model: str = "cnn"
  seed: int = 0
  val_fraction: float = 0.1
  data_root: str | None = None
  data_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

  def __post_init__(self):
    known = data.known_datasets()
    if self.dataset not in known and not self.dataset.startswith("tfds:"):
      raise ValueError(f"Unknown dataset {self.dataset!r}; known datasets: {', '.join(known)}.")
    if self.model not in models.known_models():
      raise ValueError(
        f"Unknown model {self.model!r}; known models: {', '.join(models.known_models())}."
      )
    NoiseSpec.parse(self.noise)  # raises a clear ValueError on a bad spec
    if not 0.0 < self.val_fraction < 1.0:
      raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
    if self.train.seed != self.seed:
      object.__setattr__(self, "train", dataclasses.replace(self.train, seed=self.seed))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict; `RunSpec.from_dict` rebuilds it."""
    out = dataclasses.asdict(self)
    out["train"] = self.train.to_dict()
    out["data_options"] = dict(self.data_options)
    out["model_kwargs"] = dict(self.model_kwargs)
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"Unknown RunSpec fields {sorted(unknown)}.")
    if "train" in d and not isinstance(d["train"], TrainConfig):
      d["train"] = TrainConfig(**d["train"])
    return cls(**d)


@functools.lru_cache(maxsize=8)
def _load(dataset: str, data_root: str | None, options: tuple) -> data.Dataset:
  return data.load_dataset(dataset, root=data_root, **dict(options))


def load_data(spec: RunSpec) -> data.Dataset:
  """The dataset of a run (cached in-process: the same spec loads once)."""
  return _load(spec.dataset, spec.data_root, tuple(sorted(spec.data_options.items())))


def build_splits(spec: RunSpec) -> data.NoisySplits:
  """The run's noisy train / noisy validation / clean test splits."""
  return data.make_splits(
    load_data(spec), noise=spec.noise, val_fraction=spec.val_fraction, seed=spec.seed
  )


def build_model(spec: RunSpec, num_classes: int) -> nn.Module:
  """The run's (untrained) model."""
  return models.get(spec.model, num_classes=num_classes, **dict(spec.model_kwargs))
