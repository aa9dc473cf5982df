"""Flax NNX twins of :mod:`sap_jax.models.cnn` and :mod:`sap_jax.models.mlp`.

Attribute names mirror the Linen parameter paths (``block1/conv``, ``dense1``,
``head``), so a Linen model's variables load into its twin
(`sap_jax.nnx.load_linen_variables`) and the twins have equal parameter counts.
NNX layers need their input size up front: ``in_features`` is the input channels
(CNN) or the flattened input size (MLP).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Act = Callable[[jax.Array], jax.Array]


def _same_padding(kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  return tuple((k // 2, k // 2) for k in kernel_size)


def linen_batch_norm(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """BatchNorm with the Linen models' momentum 0.9 and epsilon 1e-5."""
  return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class ConvBlock(nnx.Module):
  """``Conv -> [BatchNorm] -> act`` (bias-free conv when BatchNorm follows)."""

  def __init__(
    self,
    in_features: int,
    features: int,
    kernel_size: Sequence[int],
    strides: Sequence[int],
    *,
    batch_norm: bool = False,
    act: Act = jax.nn.relu,
    rngs: nnx.Rngs,
  ):
    self.conv = nnx.Conv(
      in_features,
      features,
      tuple(kernel_size),
      strides=tuple(strides),
      padding=_same_padding(kernel_size),
      use_bias=not batch_norm,
      rngs=rngs,
    )
    self.bn = linen_batch_norm(features, rngs) if batch_norm else None
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.conv(x)
    if self.bn is not None:
      x = self.bn(x)
    return self.act(x)


class CNN(nnx.Module):
  """NNX twin of `sap_jax.models.CNN`: conv(w) → conv(2w, /2) → conv(4w, /2) → mean → head."""

  def __init__(
    self,
    num_classes: int,
    in_features: int = 1,
    width: int = 32,
    batch_norm: bool = False,
    act: Act = jax.nn.relu,
    *,
    rngs: nnx.Rngs,
  ):
    kw = dict(kernel_size=(3, 3), batch_norm=batch_norm, act=act, rngs=rngs)
    self.block1 = ConvBlock(in_features, width, strides=(1, 1), **kw)
    self.block2 = ConvBlock(width, 2 * width, strides=(2, 2), **kw)
    self.block3 = ConvBlock(2 * width, 4 * width, strides=(2, 2), **kw)
    self.head = nnx.Linear(4 * width, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.block3(self.block2(self.block1(x)))
    return self.head(jnp.mean(x, axis=(1, 2)))


class MLP(nnx.Module):
  """NNX twin of `sap_jax.models.MLP`: ``depth`` × (Dense → [BatchNorm] → act), then head."""

  def __init__(
    self,
    num_classes: int,
    in_features: int,
    depth: int = 3,
    width: int = 256,
    batch_norm: bool = False,
    act: Act = jax.nn.relu,
    *,
    rngs: nnx.Rngs,
  ):
    self.depth = depth
    self.act = act
    d = in_features
    for i in range(depth):
      setattr(self, f"dense{i + 1}", nnx.Linear(d, width, use_bias=not batch_norm, rngs=rngs))
      setattr(self, f"bn{i + 1}", linen_batch_norm(width, rngs) if batch_norm else None)
      d = width
    self.head = nnx.Linear(d, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    for i in range(self.depth):
      x = getattr(self, f"dense{i + 1}")(x)
      bn = getattr(self, f"bn{i + 1}")
      if bn is not None:
        x = bn(x)
      x = self.act(x)
    return self.head(x)
