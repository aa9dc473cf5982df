"""Small convolutional classifiers for CPU-sized data.

* :class:`CNN`: a 2-D CNN for small images such as the 8×8×1 scikit-learn
  digits: ``conv(w) -> conv(2w, stride 2) -> conv(4w, stride 2) -> global mean
  -> head``.
* :class:`CNN1D`: a 1-D CNN for MNIST-1D signals (N×40×1): three kernel-5
  convolutions ``conv(w) -> conv(2w, stride 2) -> conv(2w, stride 2)``, then
  flatten and ``head``.

Convolutions use explicit symmetric zero padding of ``kernel // 2`` (as
PyTorch's ``padding=k // 2``), so a stride-2 layer maps length L to ceil(L / 2).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any


def _same_padding(kernel_size: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Symmetric ``k // 2`` padding per spatial dimension."""
  return tuple((k // 2, k // 2) for k in kernel_size)


class ConvBlock(nn.Module):
  """``Conv -> [BatchNorm] -> act``; the conv has no bias when BatchNorm follows.

  Attributes:
    features: Output channels.
    kernel_size: Kernel size per spatial dimension (its length sets 1-D/2-D).
    strides: Stride per spatial dimension.
    batch_norm: Whether BatchNorm follows the convolution.
    norm: BatchNorm constructor.
    act: Activation function.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int]
  batch_norm: bool = False
  norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.Conv(
      self.features,
      tuple(self.kernel_size),
      strides=tuple(self.strides),
      padding=_same_padding(self.kernel_size),
      use_bias=not self.batch_norm,
      name="conv",
    )(x)
    if self.batch_norm:
      x = self.norm(use_running_average=not train, name="bn")(x)
    return self.act(x)


class CNN(nn.Module):
  """2-D CNN for small images (e.g. 8×8×1 digits, 28×28 MNIST, 32×32 CIFAR).

  Attributes:
    num_classes: Number of output logits.
    width: Channels of the first convolution; later ones use 2× and 4×.
    batch_norm: Whether each convolution is followed by BatchNorm.
    act: Activation function.
  """

  num_classes: int
  width: int = 32
  batch_norm: bool = False
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for images ``(N, H, W, C)``."""
    block = functools.partial(
      ConvBlock, kernel_size=(3, 3), batch_norm=self.batch_norm, act=self.act
    )
    x = block(self.width, strides=(1, 1), name="block1")(x, train)
    x = block(2 * self.width, strides=(2, 2), name="block2")(x, train)
    x = block(4 * self.width, strides=(2, 2), name="block3")(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


class CNN1D(nn.Module):
  """1-D CNN for signals such as MNIST-1D (N×40×1).

  Attributes:
    num_classes: Number of output logits.
    width: Channels of the first convolution; later ones use 2×.
    kernel_size: Length of every 1-D kernel.
    batch_norm: Whether each convolution is followed by BatchNorm.
    act: Activation function.
  """

  num_classes: int
  width: int = 32
  kernel_size: int = 5
  batch_norm: bool = False
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits of shape ``(N, num_classes)`` for signals ``(N, L, C)``.

    A batch ``(N, L)`` without a channel axis is read as one channel.
    """
    if x.ndim == 2:
      x = x[..., None]
    block = functools.partial(
      ConvBlock, kernel_size=(self.kernel_size,), batch_norm=self.batch_norm, act=self.act
    )
    x = block(self.width, strides=(1,), name="block1")(x, train)
    x = block(2 * self.width, strides=(2,), name="block2")(x, train)
    x = block(2 * self.width, strides=(2,), name="block3")(x, train)
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes, name="head")(x)
