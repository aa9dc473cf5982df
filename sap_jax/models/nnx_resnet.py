"""Flax NNX twin of :mod:`sap_jax.models.resnet`: basic blocks (ResNet-18/34) and
bottleneck blocks (ResNet-50, v1.5: the stride on the 3×3 convolution).

Attribute names mirror the Linen parameter paths (``stem_conv``, ``stem_bn``,
``stage{i}_block{j}/conv1`` …, ``head``), so Linen variables load into the twin
(`sap_jax.nnx.load_linen_variables`) and the parameter counts are equal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from sap_jax.models import resnet as linen_resnet
from sap_jax.models.nnx_cnn import linen_batch_norm
from sap_jax.models.resnet import STEMS

Act = Callable[[jax.Array], jax.Array]


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


def _conv(i: int, o: int, k, s, p, rngs: nnx.Rngs) -> nnx.Conv:
  return nnx.Conv(i, o, k, strides=s, padding=p, use_bias=False, rngs=rngs)


class ResNetBlock(nnx.Module):
  """Basic block: two bias-free 3×3 convs with BatchNorm, a projection shortcut when
  the stride or the width changes (twin of `sap_jax.models.ResNetBlock`)."""

  expansion = 1

  def __init__(self, in_features: int, filters: int, strides=(1, 1), *, act: Act, rngs):
    conv = lambda i, o, k, s, p: _conv(i, o, k, s, p, rngs)  # noqa: E731
    self.conv1 = conv(in_features, filters, (3, 3), strides, _pad(3))
    self.bn1 = linen_batch_norm(filters, rngs)
    self.conv2 = conv(filters, filters, (3, 3), (1, 1), _pad(3))
    self.bn2 = linen_batch_norm(filters, rngs)
    project = tuple(strides) != (1, 1) or in_features != filters
    self.conv_proj = conv(in_features, filters, (1, 1), strides, "VALID") if project else None
    self.norm_proj = linen_batch_norm(filters, rngs) if project else None
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    residual = x if self.conv_proj is None else self.norm_proj(self.conv_proj(x))
    return self.act(residual + y)


class BottleneckResNetBlock(nnx.Module):
  """Bottleneck block: bias-free 1×1, 3×3 (strided), 1×1 (×4 wide) convs, each with
  BatchNorm, a projection shortcut when the stride or the width changes (twin of
  `sap_jax.models.BottleneckResNetBlock`; ``filters`` is the inner width, the output
  has ``4 * filters`` channels)."""

  expansion = 4

  def __init__(self, in_features: int, filters: int, strides=(1, 1), *, act: Act, rngs):
    out_features = filters * self.expansion
    conv = lambda i, o, k, s, p: _conv(i, o, k, s, p, rngs)  # noqa: E731
    self.conv1 = conv(in_features, filters, (1, 1), (1, 1), "VALID")
    self.bn1 = linen_batch_norm(filters, rngs)
    self.conv2 = conv(filters, filters, (3, 3), strides, _pad(3))
    self.bn2 = linen_batch_norm(filters, rngs)
    self.conv3 = conv(filters, out_features, (1, 1), (1, 1), "VALID")
    self.bn3 = linen_batch_norm(out_features, rngs)
    project = tuple(strides) != (1, 1) or in_features != out_features
    self.conv_proj = conv(in_features, out_features, (1, 1), strides, "VALID") if project else None
    self.norm_proj = linen_batch_norm(out_features, rngs) if project else None
    self.act = act

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.act(self.bn1(self.conv1(x)))
    y = self.act(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    residual = x if self.conv_proj is None else self.norm_proj(self.conv_proj(x))
    return self.act(residual + y)


BLOCKS = {
  linen_resnet.ResNetBlock: ResNetBlock,
  linen_resnet.BottleneckResNetBlock: BottleneckResNetBlock,
}
"""Linen block class → its NNX twin (``block_cls`` takes either)."""


class ResNet(nnx.Module):
  """NNX twin of `sap_jax.models.ResNet` (basic or bottleneck blocks).

  ``block_cls`` is :class:`ResNetBlock` or :class:`BottleneckResNetBlock`, or the
  Linen block it twins, so the Linen model's keyword arguments build the twin.
  """

  def __init__(
    self,
    num_classes: int,
    in_features: int = 3,
    stage_sizes: Sequence[int] = (2, 2, 2, 2),
    block_cls: type[nnx.Module] = ResNetBlock,
    stem: str = "cifar",
    width: int = 64,
    act: Act = jax.nn.relu,
    *,
    rngs: nnx.Rngs,
  ):
    if stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    block_cls = BLOCKS.get(block_cls, block_cls)
    if block_cls not in BLOCKS.values():
      raise ValueError(
        f"block_cls must be ResNetBlock or BottleneckResNetBlock (NNX or Linen), got {block_cls!r}"
      )
    self.stem = stem
    k, s = ((7, 7), (2, 2)) if stem == "imagenet" else ((3, 3), (1, 1))
    self.stem_conv = nnx.Conv(
      in_features, width, k, strides=s, padding=_pad(k[0]), use_bias=False, rngs=rngs
    )
    self.stem_bn = linen_batch_norm(width, rngs)
    self.act = act
    self.block_names = []
    c = width
    for i, num_blocks in enumerate(stage_sizes):
      for j in range(num_blocks):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        name = f"stage{i + 1}_block{j + 1}"
        setattr(self, name, block_cls(c, width * 2**i, strides, act=act, rngs=rngs))
        self.block_names.append(name)
        c = width * 2**i * block_cls.expansion
    self.block_names = tuple(self.block_names)
    self.head = nnx.Linear(c, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = self.act(self.stem_bn(self.stem_conv(x)))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for name in self.block_names:
      x = getattr(self, name)(x)
    return self.head(jnp.mean(x, axis=(1, 2)))


def ResNet18(num_classes: int, **kwargs) -> ResNet:
  """ResNet-18 (basic blocks, stages 2, 2, 2, 2)."""
  return ResNet(num_classes, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock, **kwargs)


def ResNet34(num_classes: int, **kwargs) -> ResNet:
  """ResNet-34 (basic blocks, stages 3, 4, 6, 3)."""
  return ResNet(num_classes, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock, **kwargs)


def ResNet50(num_classes: int, **kwargs) -> ResNet:
  """ResNet-50 (bottleneck blocks, stages 3, 4, 6, 3)."""
  return ResNet(num_classes, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock, **kwargs)
