"""Flax NNX twin of :mod:`sap_jax.models.vit`.

Attribute names mirror the Linen parameter paths (``patch_embed``, ``cls``,
``pos_embedding``, ``encoderblock_{i}/attn/query`` …, ``encoder_norm``, ``head``),
so Linen variables load into the twin (`sap_jax.nnx.load_linen_variables`) and the
parameter counts are equal. The position embedding's size is fixed by
``image_size`` (Linen reads it from the image seen at ``init``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

_gelu = functools.partial(jax.nn.gelu, approximate=False)


class MlpBlock(nnx.Module):
  """``Linear(mlp_dim) -> GELU -> dropout -> Linear(d) -> dropout``."""

  def __init__(self, dim: int, mlp_dim: int, dropout_rate: float, *, rngs: nnx.Rngs):
    self.fc1 = nnx.Linear(dim, mlp_dim, rngs=rngs)
    self.fc2 = nnx.Linear(mlp_dim, dim, rngs=rngs)
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.drop(self.fc2(self.drop(_gelu(self.fc1(x)))))


class EncoderBlock(nnx.Module):
  """Pre-norm encoder block: LayerNorm → self-attention → residual, LayerNorm → MLP → residual."""

  def __init__(
    self,
    dim: int,
    num_heads: int,
    mlp_dim: int,
    dropout_rate: float = 0.0,
    attention_dropout_rate: float = 0.0,
    *,
    rngs: nnx.Rngs,
  ):
    self.ln1 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads, dim, dropout_rate=attention_dropout_rate, decode=False, rngs=rngs
    )
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    self.ln2 = nnx.LayerNorm(dim, epsilon=1e-6, rngs=rngs)
    self.mlp = MlpBlock(dim, mlp_dim, dropout_rate, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + self.drop(self.attn(self.ln1(x)))
    return x + self.mlp(self.ln2(x))


class ViT(nnx.Module):
  """NNX twin of `sap_jax.models.ViT`; the defaults are ViT-B/16 on 224×224 images."""

  def __init__(
    self,
    num_classes: int,
    in_features: int = 3,
    image_size: int = 224,
    patch_size: int = 16,
    hidden_size: int = 768,
    num_layers: int = 12,
    num_heads: int = 12,
    mlp_dim: int = 3072,
    dropout_rate: float = 0.0,
    attention_dropout_rate: float = 0.0,
    *,
    rngs: nnx.Rngs,
  ):
    if hidden_size % num_heads:
      raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})")
    if image_size % patch_size:
      raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
    p = patch_size
    self.patch_size, self.hidden_size, self.num_layers = p, hidden_size, num_layers
    self.patch_embed = nnx.Conv(
      in_features, hidden_size, (p, p), strides=(p, p), padding="VALID", rngs=rngs
    )
    tokens = (image_size // p) ** 2 + 1
    self.cls = nnx.Param(jnp.zeros((1, 1, hidden_size)))
    self.pos_embedding = nnx.Param(
      0.02 * jax.random.normal(rngs.params(), (1, tokens, hidden_size))
    )
    self.drop = nnx.Dropout(dropout_rate, rngs=rngs)
    for i in range(num_layers):
      block = EncoderBlock(
        hidden_size, num_heads, mlp_dim, dropout_rate, attention_dropout_rate, rngs=rngs
      )
      setattr(self, f"encoderblock_{i}", block)
    self.encoder_norm = nnx.LayerNorm(hidden_size, epsilon=1e-6, rngs=rngs)
    self.head = nnx.Linear(hidden_size, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    if x.shape[1] % p or x.shape[2] % p:
      raise ValueError(f"image size {x.shape[1:3]} is not a multiple of patch_size {p}")
    x = self.patch_embed(x)
    n = x.shape[0]
    x = x.reshape((n, -1, self.hidden_size))
    cls = jnp.broadcast_to(self.cls[...], (n, 1, self.hidden_size))
    x = self.drop(jnp.concatenate([cls, x], axis=1) + self.pos_embedding[...])
    for i in range(self.num_layers):
      x = getattr(self, f"encoderblock_{i}")(x)
    return self.head(self.encoder_norm(x)[:, 0])


def VitTiny(num_classes: int, **kwargs) -> ViT:
  """The small ViT of `sap_jax.models.VitTiny` (patch 4, width 64, 2 blocks, 4 heads)."""
  kw = dict(patch_size=4, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, image_size=32)
  return ViT(num_classes, **{**kw, **kwargs})
