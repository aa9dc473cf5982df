"""Vision Transformer (Dosovitskiy et al. 2021).

The layout of torchvision's ``vit_b_16`` and google-research/vision_transformer:
a patch embedding (an ``nn.Conv`` with kernel = stride = patch size, called
``patch_embed``), a learned class token ``cls`` and position embedding
``pos_embedding`` (parameters, not layers), pre-norm encoder blocks
(``LayerNorm -> multi-head self-attention -> residual``, ``LayerNorm -> MLP ->
residual``), a final LayerNorm ``encoder_norm``, and a linear ``head`` on the
class token. Attention is :class:`flax.linen.MultiHeadDotProductAttention`,
whose query/key/value/out projections are ``nn.DenseGeneral`` layers.
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class MlpBlock(nn.Module):
  """Transformer MLP: ``Dense(mlp_dim) -> GELU -> dropout -> Dense(d) -> dropout``.

  Attributes:
    mlp_dim: Hidden width.
    dropout_rate: Dropout rate (inactive unless training).
    act: Activation (exact GELU, as torchvision's ``nn.GELU()``).
  """

  mlp_dim: int
  dropout_rate: float = 0.0
  act: Callable[[jax.Array], jax.Array] = functools.partial(nn.gelu, approximate=False)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    out_dim = x.shape[-1]
    x = self.act(nn.Dense(self.mlp_dim, name="fc1")(x))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    x = nn.Dense(out_dim, name="fc2")(x)
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)


class EncoderBlock(nn.Module):
  """Pre-norm Transformer encoder block.

  Attributes:
    num_heads: Attention heads.
    mlp_dim: Hidden width of the MLP.
    dropout_rate: Dropout after attention and in the MLP.
    attention_dropout_rate: Dropout on the attention weights.
  """

  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    y = nn.LayerNorm(epsilon=1e-6, name="ln1")(x)
    y = nn.MultiHeadDotProductAttention(
      num_heads=self.num_heads,
      dropout_rate=self.attention_dropout_rate,
      deterministic=not train,
      name="attn",
    )(y, y)
    y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, name="ln2")(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, name="mlp")(y, train)
    return x + y


class ViT(nn.Module):
  """Vision Transformer classifier; the defaults are ViT-B/16.

  The position embedding has one row per patch plus one for the class token,
  so its size is fixed by the image size seen at ``init``.

  Attributes:
    num_classes: Number of output logits.
    patch_size: Side of the square patches.
    hidden_size: Token width.
    num_layers: Number of encoder blocks.
    num_heads: Attention heads per block.
    mlp_dim: Hidden width of each block's MLP.
    dropout_rate: Dropout on embeddings, after attention and in the MLP.
    attention_dropout_rate: Dropout on attention weights.
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
        f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})"
      )
    super().__post_init__()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Returns logits ``(N, num_classes)`` for images ``(N, H, W, C)``.

    H and W must be multiples of ``patch_size``.
    """
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of patch_size {p}")
    x = nn.Conv(self.hidden_size, (p, p), strides=(p, p), padding="VALID", name="patch_embed")(x)
    n = x.shape[0]
    x = x.reshape((n, -1, self.hidden_size))
    cls = self.param("cls", nn.initializers.zeros, (1, 1, self.hidden_size), x.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, self.hidden_size)), x], axis=1)
    pos = self.param(
      "pos_embedding", nn.initializers.normal(stddev=0.02), (1,) + x.shape[1:], x.dtype
    )
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(x + pos)
    for i in range(self.num_layers):
      x = EncoderBlock(
        self.num_heads,
        self.mlp_dim,
        self.dropout_rate,
        self.attention_dropout_rate,
        name=f"encoderblock_{i}",
      )(x, train)
    x = nn.LayerNorm(epsilon=1e-6, name="encoder_norm")(x)
    return nn.Dense(self.num_classes, name="head")(x[:, 0])


VitB16 = functools.partial(
  ViT, patch_size=16, hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072
)
VitTiny = functools.partial(
  ViT, patch_size=4, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128
)
