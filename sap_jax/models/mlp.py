"""Multi-layer perceptron classifier.

The input is flattened, so the same model takes vectors (N×D), signals (N×L×C)
or images (N×H×W×C).
"""

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

ModuleDef = Any


class MLP(nn.Module):
  """Fully connected classifier: ``depth`` hidden layers, then ``head``.

  Each hidden layer is ``Dense -> [BatchNorm] -> act``; with BatchNorm the Dense
  has no bias (BatchNorm's own shift replaces it).

  Attributes:
    num_classes: Number of output logits.
    depth: Number of hidden layers (0 gives a linear classifier).
    width: Units per hidden layer.
    batch_norm: Whether to normalise each hidden layer with BatchNorm.
    norm: BatchNorm constructor (``use_running_average`` is set per call).
    act: Activation function.
  """

  num_classes: int
  depth: int = 3
  width: int = 256
  batch_norm: bool = False
  norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)``.

    Args:
      x: Batch of any shape ``(N, ...)``; it is flattened to ``(N, -1)``.
      train: Training mode (BatchNorm uses and updates batch statistics).
    """
    x = x.reshape((x.shape[0], -1))
    for i in range(self.depth):
      x = nn.Dense(self.width, use_bias=not self.batch_norm, name=f"dense{i + 1}")(x)
      if self.batch_norm:
        x = self.norm(use_running_average=not train, name=f"bn{i + 1}")(x)
      x = self.act(x)
    return nn.Dense(self.num_classes, name="head")(x)
