"""Shared cases of the streaming tests: a small image folder, its model and options."""

from __future__ import annotations

import functools
from pathlib import Path

from sap_jax.data.sources import FolderSource
from sap_jax.train_config import TrainConfig
from tests.fake_data import write_image_folder

CLASSES = ("a", "b", "c")
PER_CLASS = 21  # 63 training images: not a multiple of 8 devices
SIZE = 8


class CountingSource:
  """A source that records every index it is asked for (in this process): in ``reads``,
  and in ``by_phase[phase]`` under the phase last set (e.g. from `run_sap`'s progress)."""

  def __init__(self, source):
    self.source, self.reads, self.phase, self.by_phase = source, [], None, {}

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    self.reads.append(int(i))
    self.by_phase.setdefault(self.phase, []).append(int(i))
    return self.source[i]


def write_folder(root: Path) -> Path:
  """``root/{train,test}/<class>/*.png``, written unless it exists."""
  if not (root / "train").exists():
    write_image_folder(root, classes=CLASSES, per_class=PER_CLASS, size=12, seed=3)
  return root


def folder_sources(root: Path) -> tuple[FolderSource, FolderSource]:
  """(train, test) sources of the folder."""
  train = FolderSource(write_folder(root), "train", image_size=SIZE)
  return train, FolderSource(root, "test", image_size=SIZE, classes=train.classes)


def folder_model():
  """(model, eval-mode apply_fn): the registry's small CNN."""
  import sap_jax.models

  model = sap_jax.models.get("cnn", num_classes=len(CLASSES))
  return model, functools.partial(model.apply, train=False)


def train_config() -> TrainConfig:
  return TrainConfig(epochs=2, batch_size=16, learning_rate=0.05, seed=1)


def sap_options() -> dict:
  return dict(n_trusted=24, alphas=[3.0, 30.0, 300.0, 1e4], batch_size=16)
