"""ResNet v1.5 (He et al. 2016) with a CIFAR or ImageNet stem.

The layout is that of torchvision's ResNet (ImageNet stem) and of
kuangliu/pytorch-cifar's ResNet (CIFAR stem), which the SAP code uses:

* every convolution is bias-free and followed by BatchNorm;
* a block whose stride is not 1 or whose channel count changes gets a
  projection shortcut, a strided 1×1 convolution plus BatchNorm
  (``conv_proj``/``norm_proj``);
* bottleneck blocks put the stride on the 3×3 convolution (v1.5);
* global average pooling, then one ``Dense(num_classes)`` called ``head``.

Paddings are explicit and symmetric (``k // 2``, as in PyTorch), so a stride-2
layer on an even-sized map matches the references exactly.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

STEMS = ("cifar", "imagenet")


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
  return ((k // 2, k // 2), (k // 2, k // 2))


class ResNetBlock(nn.Module):
  """Basic block: two 3×3 convolutions (ResNet-18/34).

  Attributes:
    filters: Output channels.
    conv: Bias-free convolution constructor.
    norm: BatchNorm constructor with ``use_running_average`` already bound.
    act: Activation function.
    strides: Stride of the first convolution and of the shortcut.
  """

  expansion = 1

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), padding=_pad(3), name="conv2")(y)
    y = self.norm(name="bn2")(y)
    residual = x
    if tuple(self.strides) != (1, 1) or x.shape[-1] != self.filters:
      residual = self.conv(self.filters, (1, 1), self.strides, padding="VALID", name="conv_proj")(x)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class BottleneckResNetBlock(nn.Module):
  """Bottleneck block: 1×1, 3×3 (strided), 1×1 ×4 convolutions (ResNet-50).

  Attributes:
    filters: Width of the inner convolutions; the output has 4× this.
    conv: Bias-free convolution constructor.
    norm: BatchNorm constructor with ``use_running_average`` already bound.
    act: Activation function.
    strides: Stride of the 3×3 convolution and of the shortcut.
  """

  expansion = 4

  filters: int
  conv: ModuleDef
  norm: ModuleDef
  act: Callable[[jax.Array], jax.Array]
  strides: tuple[int, int] = (1, 1)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.filters * self.expansion
    y = self.conv(self.filters, (1, 1), padding="VALID", name="conv1")(x)
    y = self.act(self.norm(name="bn1")(y))
    y = self.conv(self.filters, (3, 3), self.strides, padding=_pad(3), name="conv2")(y)
    y = self.act(self.norm(name="bn2")(y))
    y = self.conv(out_features, (1, 1), padding="VALID", name="conv3")(y)
    y = self.norm(name="bn3")(y)
    residual = x
    if tuple(self.strides) != (1, 1) or x.shape[-1] != out_features:
      residual = self.conv(out_features, (1, 1), self.strides, padding="VALID", name="conv_proj")(x)
      residual = self.norm(name="norm_proj")(residual)
    return self.act(residual + y)


class ResNet(nn.Module):
  """ResNet classifier.

  Layers are named ``stem_conv``, ``stem_bn``, ``stage{i}_block{j}`` (1-based)
  and ``head``.

  Attributes:
    num_classes: Number of output logits.
    stage_sizes: Number of blocks in each stage; stage ``i`` has width
      ``width * 2**i`` and all but the first stage start with stride 2.
    block_cls: :class:`ResNetBlock` or :class:`BottleneckResNetBlock`.
    stem: ``"cifar"``: 3×3 conv, stride 1, no pooling (kuangliu/pytorch-cifar);
      ``"imagenet"``: 7×7 conv, stride 2, then 3×3/2 max pool (torchvision).
    width: Width of the stem and first stage (64 in the references).
    conv: Convolution constructor (``use_bias=False`` is bound here).
    norm: BatchNorm constructor (``use_running_average`` is bound per call).
    act: Activation function.
  """

  num_classes: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block_cls: ModuleDef = ResNetBlock
  stem: str = "cifar"
  width: int = 64
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
  act: Callable[[jax.Array], jax.Array] = nn.relu

  def __post_init__(self):
    if self.stem not in STEMS:
      raise ValueError(f"stem must be one of {STEMS}, got {self.stem!r}")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits ``(N, num_classes)`` for images ``(N, H, W, C)``."""
    conv = functools.partial(self.conv, use_bias=False)
    norm = functools.partial(self.norm, use_running_average=not train)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=_pad(7), name="stem_conv")(x)
    else:
      x = conv(self.width, (3, 3), (1, 1), padding=_pad(3), name="stem_conv")(x)
    x = self.act(norm(name="stem_bn")(x))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=_pad(3))
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = (2, 2) if i > 0 and j == 0 else (1, 1)
        x = self.block_cls(
          self.width * 2**i,
          conv=conv,
          norm=norm,
          act=self.act,
          strides=strides,
          name=f"stage{i + 1}_block{j + 1}",
        )(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block_cls=ResNetBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=ResNetBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block_cls=BottleneckResNetBlock)
