"""Shared cases of the training tests: a tiny MLP and separable blobs."""

from __future__ import annotations

import flax.linen as nn

from tests import fake_data


class TinyMLP(nn.Module):
  """2-layer MLP; optional BatchNorm after the hidden layer."""

  num_classes: int = 3
  bn: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(16)(x)
    if self.bn:
      x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(self.num_classes)(nn.relu(x))


def blobs(n=240, seed=0, k=3):
  return fake_data.blobs(n, seed, k)
