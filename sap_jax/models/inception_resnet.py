"""Inception-ResNet-v2 (Szegedy et al. 2017, arXiv 1602.07261).

The layout of the PyTorch port used with the paper's WebVision experiments
(Cadene/pretrained-models.pytorch ``inceptionresnetv2``, also timm's
``inception_resnet_v2``):

* every ``ConvBN`` unit is a bias-free convolution, BatchNorm (eps 1e-3) and
  ReLU; paddings are explicit and as in the reference (valid unless stated);
* stem ``conv2d_1a`` … ``conv2d_4a`` with two 3×3/2 max pools, then
  ``mixed_5b`` (320 channels), 10 × ``Block35`` (residual scale 0.17),
  ``mixed_6a`` (1088), 20 × ``Block17`` (0.10), ``mixed_7a`` (2080),
  9 × ``Block8`` (0.20), a last ``Block8`` (scale 1, no ReLU), ``conv2d_7b``
  (1536), global average pooling and a linear ``head``;
* each residual block ends with a 1×1 convolution **with** bias (``conv_up``,
  no BatchNorm) that maps the concatenated branches back to the input width.

Inputs must be at least 75×75 (299×299 in the reference).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any
Padding = str | Sequence[tuple[int, int]]


def _pad(kernel: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """Symmetric ``k // 2`` padding per spatial dimension."""
  return tuple((k // 2, k // 2) for k in kernel)


def _scaled(channels: int, multiplier: float) -> int:
  return max(1, int(round(channels * multiplier)))


class ConvBN(nn.Module):
  """Bias-free convolution, BatchNorm, ReLU (the reference's ``BasicConv2d``).

  Attributes:
    features: Output channels.
    kernel_size: Kernel size.
    norm: BatchNorm constructor with ``use_running_average`` already bound.
    strides: Convolution strides.
    padding: Convolution padding.
    act: Activation function.
  """

  features: int
  kernel_size: Sequence[int]
  norm: ModuleDef
  strides: Sequence[int] = (1, 1)
  padding: Padding = "VALID"
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(
      self.features,
      tuple(self.kernel_size),
      strides=tuple(self.strides),
      padding=self.padding,
      use_bias=False,
      name="conv",
    )(x)
    return self.act(self.norm(name="bn")(x))


class Mixed5b(nn.Module):
  """35×35 Inception block: 192 → 96 + 64 + 96 + 64 = 320 channels."""

  norm: ModuleDef
  width_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(_scaled, multiplier=self.width_multiplier)
    unit = functools.partial(ConvBN, norm=self.norm)
    b0 = unit(c(96), (1, 1), name="branch0")(x)
    b1 = unit(c(48), (1, 1), name="branch1_1")(x)
    b1 = unit(c(64), (5, 5), padding=_pad((5, 5)), name="branch1_2")(b1)
    b2 = unit(c(64), (1, 1), name="branch2_1")(x)
    b2 = unit(c(96), (3, 3), padding=_pad((3, 3)), name="branch2_2")(b2)
    b2 = unit(c(96), (3, 3), padding=_pad((3, 3)), name="branch2_3")(b2)
    b3 = nn.avg_pool(x, (3, 3), strides=(1, 1), padding=_pad((3, 3)), count_include_pad=False)
    b3 = unit(c(64), (1, 1), name="branch3")(b3)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class Mixed6a(nn.Module):
  """Reduction 35 → 17: 320 → 384 + 384 + 320 (max pool) = 1088 channels."""

  norm: ModuleDef
  width_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(_scaled, multiplier=self.width_multiplier)
    unit = functools.partial(ConvBN, norm=self.norm)
    b0 = unit(c(384), (3, 3), strides=(2, 2), name="branch0")(x)
    b1 = unit(c(256), (1, 1), name="branch1_1")(x)
    b1 = unit(c(256), (3, 3), padding=_pad((3, 3)), name="branch1_2")(b1)
    b1 = unit(c(384), (3, 3), strides=(2, 2), name="branch1_3")(b1)
    b2 = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b0, b1, b2], axis=-1)


class Mixed7a(nn.Module):
  """Reduction 17 → 8: 1088 → 384 + 288 + 320 + 1088 (max pool) = 2080."""

  norm: ModuleDef
  width_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = functools.partial(_scaled, multiplier=self.width_multiplier)
    unit = functools.partial(ConvBN, norm=self.norm)
    b0 = unit(c(256), (1, 1), name="branch0_1")(x)
    b0 = unit(c(384), (3, 3), strides=(2, 2), name="branch0_2")(b0)
    b1 = unit(c(256), (1, 1), name="branch1_1")(x)
    b1 = unit(c(288), (3, 3), strides=(2, 2), name="branch1_2")(b1)
    b2 = unit(c(256), (1, 1), name="branch2_1")(x)
    b2 = unit(c(288), (3, 3), padding=_pad((3, 3)), name="branch2_2")(b2)
    b2 = unit(c(320), (3, 3), strides=(2, 2), name="branch2_3")(b2)
    b3 = nn.max_pool(x, (3, 3), strides=(2, 2))
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionResidual(nn.Module):
  """Residual Inception block: ``act(x + scale * conv_up(concat(branches)))``.

  Attributes:
    branches: One tuple per branch of ``(channels, kernel)`` pairs, applied in
      sequence; branch ``i`` unit ``j`` is named ``branch{i}_{j}`` (1-based j).
      The kernels are padded to keep the spatial size.
    norm: BatchNorm constructor with ``use_running_average`` already bound.
    scale: Residual scale.
    activate: Whether a ReLU follows the sum (off for the last Block8).
    width_multiplier: Scales every branch width.
  """

  branches: Sequence[Sequence[tuple[int, tuple[int, int]]]]
  norm: ModuleDef
  scale: float = 1.0
  activate: bool = True
  width_multiplier: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    outs = []
    for i, branch in enumerate(self.branches):
      y = x
      for j, (channels, kernel) in enumerate(branch):
        y = ConvBN(
          _scaled(channels, self.width_multiplier),
          kernel,
          norm=self.norm,
          padding=_pad(kernel),
          name=f"branch{i}_{j + 1}",
        )(y)
      outs.append(y)
    y = nn.Conv(x.shape[-1], (1, 1), padding="VALID", name="conv_up")(
      jnp.concatenate(outs, axis=-1)
    )
    x = x + self.scale * y
    return nn.relu(x) if self.activate else x


#: Branches of the three residual block types, as (channels, kernel) units.
BLOCK35 = (
  ((32, (1, 1)),),
  ((32, (1, 1)), (32, (3, 3))),
  ((32, (1, 1)), (48, (3, 3)), (64, (3, 3))),
)
BLOCK17 = (
  ((192, (1, 1)),),
  ((128, (1, 1)), (160, (1, 7)), (192, (7, 1))),
)
BLOCK8 = (
  ((192, (1, 1)),),
  ((192, (1, 1)), (224, (1, 3)), (256, (3, 1))),
)


class InceptionResNetV2(nn.Module):
  """Inception-ResNet-v2 classifier.

  Attributes:
    num_classes: Number of output logits.
    block_repeats: Numbers of Block35, Block17 and Block8 units (10, 20, 9 in
      the reference; the final un-activated Block8 comes on top).
    width_multiplier: Scales every ConvBN width (1.0 is the reference).
    norm: BatchNorm constructor (``use_running_average`` is bound per call).
  """

  num_classes: int
  block_repeats: Sequence[int] = (10, 20, 9)
  width_multiplier: float = 1.0
  norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-3)

  def __post_init__(self):
    if len(self.block_repeats) != 3:
      raise ValueError(
        f"block_repeats needs 3 entries (Block35, Block17, Block8), got {self.block_repeats}"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits ``(N, num_classes)`` for images ``(N, H, W, C)``, H, W ≥ 75."""
    if min(x.shape[1:3]) < 75:
      raise ValueError(f"Inception-ResNet-v2 needs images of at least 75×75, got {x.shape[1:3]}")
    norm = functools.partial(self.norm, use_running_average=not train)
    m = self.width_multiplier
    c = functools.partial(_scaled, multiplier=m)
    unit = functools.partial(ConvBN, norm=norm)
    x = unit(c(32), (3, 3), strides=(2, 2), name="conv2d_1a")(x)
    x = unit(c(32), (3, 3), name="conv2d_2a")(x)
    x = unit(c(64), (3, 3), padding=_pad((3, 3)), name="conv2d_2b")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = unit(c(80), (1, 1), name="conv2d_3b")(x)
    x = unit(c(192), (3, 3), name="conv2d_4a")(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = Mixed5b(norm, m, name="mixed_5b")(x)
    n35, n17, n8 = self.block_repeats
    for i in range(n35):
      x = InceptionResidual(BLOCK35, norm, 0.17, width_multiplier=m, name=f"block35_{i + 1}")(x)
    x = Mixed6a(norm, m, name="mixed_6a")(x)
    for i in range(n17):
      x = InceptionResidual(BLOCK17, norm, 0.10, width_multiplier=m, name=f"block17_{i + 1}")(x)
    x = Mixed7a(norm, m, name="mixed_7a")(x)
    for i in range(n8):
      x = InceptionResidual(BLOCK8, norm, 0.20, width_multiplier=m, name=f"block8_{i + 1}")(x)
    x = InceptionResidual(
      BLOCK8, norm, 1.0, activate=False, width_multiplier=m, name="block8_final"
    )(x)
    x = unit(c(1536), (1, 1), name="conv2d_7b")(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)
