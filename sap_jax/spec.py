"""What a run is: data, noise, model and training settings, rebuildable from JSON.

A `RunSpec` is stored in every checkpoint's metadata, so a later `correct` or
`evaluate` rebuilds exactly the same noisy splits and model from the checkpoint
alone: data → noise → train → (checkpoint) → SAP → evaluate. Its ``data_root`` is
made absolute when the spec is made (``~`` expanded, relative to the working
directory then), so the checkpoint finds its data from any working directory; the
checkpoint also records the data's content fingerprint (`sap_jax.provenance`), so
moved data can be pointed at and changed data are noticed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax import nnx

from sap_jax import data, models
from sap_jax.models.nnx_zoo import NNX_MODELS
from sap_jax.noise_spec import NoiseSpec
from sap_jax.train import TrainConfig

APIS = ("linen", "nnx")
"""The model APIs a run can use (`RunSpec.api`)."""

_FLAT_INPUT = frozenset({"mlp"})
"""NNX twins whose ``in_features`` is the flattened input size (the others: channels)."""
_IMAGE_SIZED = frozenset({"vit", "vit_tiny"})
"""NNX twins that also take ``image_size``."""


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
    data_root: folder or file for datasets read from disk (CIFAR, npz, folder),
      stored absolute.
    data_options: extra `load_dataset` options.
    model_kwargs: extra `models.get` keyword arguments.
    train: the training configuration.
    api: the Flax API of the model: "linen" (default; also every spec saved before
      the field existed) or "nnx" (the NNX twin, `sap_jax.models.get(..., api="nnx")`).
    init_from: pretrained weights training starts from (`sap_jax.init_from`: a
      ``.npz``/``.safetensors`` file, a checkpoint or an orbax directory; torchvision
      state dicts are converted), stored absolute; None: a random initialisation.
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
  api: str = "linen"
  init_from: str | None = None

  def __post_init__(self):
    known = data.known_datasets()
    if self.dataset not in known and not self.dataset.startswith("tfds:"):
      raise ValueError(f"Unknown dataset {self.dataset!r}; known datasets: {', '.join(known)}.")
    if self.model not in models.known_models():
      raise ValueError(
        f"Unknown model {self.model!r}; known models: {', '.join(models.known_models())}."
      )
    if self.api not in APIS:
      raise ValueError(f"api must be one of {', '.join(APIS)}, got {self.api!r}.")
    if self.api == "nnx" and self.model not in NNX_MODELS:
      raise ValueError(
        f"model {self.model!r} has no NNX twin; with api 'nnx' use one of "
        f"{', '.join(sorted(NNX_MODELS))}, or api 'linen'."
      )
    NoiseSpec.parse(self.noise)  # raises a clear ValueError on a bad spec
    if not 0.0 < self.val_fraction < 1.0:
      raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}.")
    if self.data_root is not None:
      if not isinstance(self.data_root, (str, os.PathLike)):
        raise ValueError(
          f"data_root must be a path, got {type(self.data_root).__name__}; pass a folder or file."
        )
      root = os.path.abspath(os.path.expanduser(os.fspath(self.data_root)))
      object.__setattr__(self, "data_root", root)
    if self.init_from is not None:
      if not isinstance(self.init_from, (str, os.PathLike)):
        raise ValueError(
          f"init_from must be a path, got {type(self.init_from).__name__}; pass the "
          "pretrained weights' file or directory."
        )
      path = os.path.abspath(os.path.expanduser(os.fspath(self.init_from)))
      object.__setattr__(self, "init_from", path)
    for name in ("data_options", "model_kwargs"):
      if not isinstance(getattr(self, name), Mapping):
        raise ValueError(f"{name} must be a mapping of option names to values.")
    if self.train.seed != self.seed:
      object.__setattr__(self, "train", dataclasses.replace(self.train, seed=self.seed))

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready dict; `RunSpec.from_dict` rebuilds it.

    ``api`` appears only when it is not "linen", and ``init_from`` only when set, so
    a Linen run from a random initialisation has the dict (and every key or hash made
    from it, e.g. the experiment runner's) it had before those fields existed.
    """
    out = dataclasses.asdict(self)
    out["train"] = self.train.to_dict()
    out["data_options"] = dict(self.data_options)
    out["model_kwargs"] = dict(self.model_kwargs)
    if out["api"] == "linen":
      del out["api"]
    if out["init_from"] is None:
      del out["init_from"]
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
def _load(dataset: str, data_root: str | None, options: str, stream: bool) -> data.Dataset:
  kwargs = json.loads(options)
  name = dataset.strip().lower()
  if stream and (name in STREAMED or name.startswith("tfds:")):  # no array of all images
    kwargs.setdefault("lazy", True)
  return data.load_dataset(dataset, root=data_root, **kwargs)


def load_data(spec: RunSpec, *, stream: bool = False) -> data.Dataset:
  """The dataset of a run (cached in-process: the same spec loads once).

  Option values may be any JSON value (numbers, strings, lists, dicts). With ``stream``,
  a data set of `STREAMED` is loaded lazily (its inputs are sources, read one sample at a
  time) unless its options say ``lazy``; the command line and the experiment runner
  stream (every method, the baselines included, reads sources through the feeder).
  """
  try:
    options = json.dumps(dict(spec.data_options), sort_keys=True)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"data options {dict(spec.data_options)!r} are not plain JSON values ({e}); pass "
      "numbers, strings, lists or dicts."
    ) from None
  return _load(spec.dataset, spec.data_root, options, bool(stream))


STREAMED = ("folder", "cifar10", "cifar100", "cifar10n", "cifar100n")
"""The data sets a run reads lazily (`sap_jax.data.sources`), one image at a time, besides
every "tfds:<name>"."""


def build_splits(spec: RunSpec, *, stream: bool = False) -> data.NoisySplits:
  """The run's noisy train / noisy validation / clean test splits (``stream``: see
  `load_data`)."""
  return data.make_splits(
    load_data(spec, stream=stream),
    noise=spec.noise,
    val_fraction=spec.val_fraction,
    seed=spec.seed,
  )


def build_model(
  spec: RunSpec, num_classes: int, input_shape: tuple[int, ...] | None = None
) -> nn.Module | nnx.Module:
  """The run's (untrained) model: an unbound Linen module, or with ``api="nnx"`` the
  NNX twin, built and initialised from ``nnx.Rngs(spec.seed)``.

  Args:
    spec: the run.
    num_classes: K.
    input_shape: the shape of one input sample (NNX only, required there): gives the
      twin's ``in_features`` (channels, or the flattened size for ``mlp``) and the
      ViTs' ``image_size``, unless ``model_kwargs`` sets them.
  """
  kwargs = dict(spec.model_kwargs)
  if spec.api == "linen":
    return models.get(spec.model, num_classes=num_classes, **kwargs)
  if input_shape is None:
    raise ValueError("An NNX model is built for its inputs: pass input_shape (one sample's).")
  size = 1
  for n in input_shape:
    size *= int(n)
  kwargs.setdefault("in_features", size if spec.model in _FLAT_INPUT else int(input_shape[-1]))
  if spec.model in _IMAGE_SIZED:
    kwargs.setdefault("image_size", int(input_shape[0]))
  return models.get(spec.model, num_classes, api="nnx", seed=spec.seed, **kwargs)
