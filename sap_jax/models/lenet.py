"""LeNet-5 (LeCun et al. 1998) in its common modern form.

``conv 6@5×5 (pad 2) -> pool -> conv 16@5×5 -> pool -> fc 120 -> fc 84 -> head``
with ReLU and 2×2 max pooling. The first convolution pads by 2 so a 28×28
MNIST image reaches the classic 16×5×5 = 400 features (a 32×32 input without
padding does the same in the 1998 paper); the parameter count is then the
classic 61,706 for 10 classes and one input channel.
"""

from collections.abc import Callable

import flax.linen as nn
import jax


class LeNet5(nn.Module):
  """LeNet-5 classifier.

  Attributes:
    num_classes: Number of output logits.
    act: Activation function (ReLU; the 1998 paper used scaled tanh).
  """

  num_classes: int
  act: Callable[[jax.Array], jax.Array] = nn.relu

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits ``(N, num_classes)`` for images ``(N, H, W, C)``, H, W ≥ 16.

    Args:
      x: Image batch.
      train: Unused (no BatchNorm or dropout); kept for the common signature.
    """
    del train
    x = nn.Conv(6, (5, 5), padding=((2, 2), (2, 2)), name="conv1")(x)
    x = nn.max_pool(self.act(x), (2, 2), strides=(2, 2))
    x = nn.Conv(16, (5, 5), padding="VALID", name="conv2")(x)
    x = nn.max_pool(self.act(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    x = self.act(nn.Dense(120, name="fc1")(x))
    x = self.act(nn.Dense(84, name="fc2")(x))
    return nn.Dense(self.num_classes, name="head")(x)
