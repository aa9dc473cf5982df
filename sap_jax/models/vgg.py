"""VGG with BatchNorm, CIFAR form (Simonyan & Zisserman 2015; Ioffe & Szegedy 2015).

This follows the CIFAR VGG of kuangliu/pytorch-cifar, which the SAP code uses:
each 3×3 convolution (padding 1, with bias) is followed by BatchNorm and ReLU,
each ``"M"`` in the configuration is a 2×2/2 max pool, and the classifier is a
single ``Dense(num_classes)`` on the 512 features left after five pools of a
32×32 image. The reference flattens the 1×1 map; this module takes the spatial
mean instead, which is identical at 32×32 and also accepts larger inputs (any
H, W ≥ 32).
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

#: Layer configurations: ints are 3×3 conv widths, "M" is a 2×2 max pool.
CONFIGS: dict[str, tuple[int | str, ...]] = {
  "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
  "vgg16": (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
  ),
}


class VGG(nn.Module):
  """VGG-BN feature extractor and a single linear ``head``.

  Layers are named ``conv1, bn1, conv2, bn2, ...`` in order, and ``head``.

  Attributes:
    num_classes: Number of output logits.
    config: Layer configuration (see :data:`CONFIGS`).
    width_multiplier: Scales every convolution's width (at least 1 channel);
      1.0 is the reference model, small values give tiny test models.
    conv: Convolution constructor.
    norm: BatchNorm constructor (``use_running_average`` is set per call).
    act: Activation function.
  """

  num_classes: int
  config: Sequence[int | str] = CONFIGS["vgg11"]
  width_multiplier: float = 1.0
  conv: ModuleDef = nn.Conv
  norm: ModuleDef = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits ``(N, num_classes)`` for images ``(N, H, W, C)``."""
    i = 0
    for v in self.config:
      if v == "M":
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        continue
      i += 1
      features = max(1, int(round(v * self.width_multiplier)))
      x = self.conv(features, (3, 3), padding=((1, 1), (1, 1)), name=f"conv{i}")(x)
      x = self.norm(use_running_average=not train, name=f"bn{i}")(x)
      x = self.act(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


VGG11 = functools.partial(VGG, config=CONFIGS["vgg11"])
VGG13 = functools.partial(VGG, config=CONFIGS["vgg13"])
VGG16 = functools.partial(VGG, config=CONFIGS["vgg16"])
