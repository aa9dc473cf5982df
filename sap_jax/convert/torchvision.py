"""torchvision state dicts → variables of the registry's Linen models.

The input is a mapping ``name → numpy array``: a torch ``state_dict()`` with every
tensor turned into numpy (``{k: v.numpy() for k, v in sd.items()}``), or the
``.npz`` file such a dict was saved to (``np.load(path)``). Nothing here imports
torch. The output is ``{"params": …, "batch_stats": …}`` (nested dicts of float32
arrays) for ``sap_jax.models.get(...)``; the NNX twins take it through
`sap_jax.nnx.load_linen_variables`.

ResNet (torchvision ``resnet18``/``resnet34``/``resnet50`` → registry
``resnet18``/``resnet34``/``resnet50`` with ``stem="imagenet"``): the two have the
same structure (7×7/2 stem conv and 3×3/2 max pool, v1.5 bottlenecks with the stride
on the 3×3 conv, projection shortcuts exactly where the stride or width changes,
BatchNorm epsilon 1e-5, global average pooling). Names::

  conv1, bn1                          → stem_conv, stem_bn
  layer{i}.{j}.conv{k}, .bn{k}        → stage{i}_block{j+1}/conv{k}, bn{k}
  layer{i}.{j}.downsample.0, .1       → stage{i}_block{j+1}/conv_proj, norm_proj
  fc                                  → head

Conv weights OIHW → kernels HWIO; Linear weights (out, in) → kernels (in, out);
BatchNorm ``weight``/``bias`` → params ``scale``/``bias`` and ``running_mean``/
``running_var`` → batch_stats ``mean``/``var`` (``num_batches_tracked`` is dropped:
the momentum plays no part in evaluation).

ViT (torchvision ``vit_b_16`` or any ``VisionTransformer`` without
``representation_size`` → registry ``vit_b16`` / ``vit``): the same pre-norm
encoder (LayerNorm epsilon 1e-6, exact GELU, class token first, patches in row-major
order, head on the class token). Names::

  conv_proj                                     → patch_embed
  class_token, encoder.pos_embedding            → cls, pos_embedding
  encoder.layers.encoder_layer_{i}.ln_1, ln_2   → encoderblock_{i}/ln1, ln2
  ….self_attention.in_proj_weight/_bias         → attn/query, key, value (split in 3)
  ….self_attention.out_proj                     → attn/out
  ….mlp.0, mlp.3 (older: mlp.linear_1, linear_2) → mlp/fc1, fc2
  encoder.ln, heads.head                        → encoder_norm, head

The fused ``in_proj`` rows are ``[query; key; value]``, each ``(D, D)`` with output
index ``head * head_dim + d``; Flax's ``DenseGeneral`` kernels are ``(D, heads,
head_dim)`` (query/key/value) and ``(heads, head_dim, D)`` (out).
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

Variables = dict[str, Any]

_BN_FIELDS = {
  "weight": ("params", "scale"),
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}


def _arrays(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  if not hasattr(state_dict, "keys") or not hasattr(state_dict, "__getitem__"):
    raise ValueError(
      f"state_dict must be a mapping name -> array, got {type(state_dict).__name__}; pass "
      "{k: v.numpy() for k, v in model.state_dict().items()} or np.load('weights.npz')."
    )
  out = {}
  for key in state_dict.keys():
    value = state_dict[key]
    if hasattr(value, "detach"):  # a torch tensor passed by mistake
      raise ValueError(
        f"state_dict[{key!r}] is a {type(value).__name__}, not a numpy array; convert the "
        "state dict with {k: v.detach().cpu().numpy() for k, v in sd.items()}."
      )
    out[str(key)] = np.asarray(value)
  return out


def _conv_kernel(w: np.ndarray, name: str) -> np.ndarray:
  if w.ndim != 4:
    raise ValueError(f"{name} must be a 4-D OIHW conv weight, got shape {w.shape}.")
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), np.float32)


def _dense_kernel(w: np.ndarray, name: str) -> np.ndarray:
  if w.ndim != 2:
    raise ValueError(f"{name} must be a 2-D (out, in) Linear weight, got shape {w.shape}.")
  return np.ascontiguousarray(w.T, np.float32)


def _f32(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x, np.float32)


def _refuse_unknown(unknown: list[str], family: str) -> None:
  if unknown:
    raise ValueError(
      f"{len(unknown)} state-dict entr{'y' if len(unknown) == 1 else 'ies'} not part of a "
      f"torchvision {family}: {sorted(unknown)[:6]}; convert the matching torchvision model "
      "(or drop those entries first)."
    )


def _nest(flat: dict[tuple[str, ...], np.ndarray]) -> Variables:
  out = traverse_util.unflatten_dict(flat)
  out.setdefault("params", {})
  return out


def _require_complete(flat: dict[tuple[str, ...], np.ndarray], family: str) -> None:
  """Every BatchNorm/LayerNorm/Dense group has all of its members."""
  groups: dict[tuple[str, ...], set[tuple[str, str]]] = {}
  for key in flat:
    groups.setdefault(key[1:-1], set()).add((key[0], key[-1]))
  for layer, have in groups.items():
    needed = None
    if ("batch_stats", "mean") in have or ("params", "scale") in have:
      needed = (
        {("params", "scale"), ("params", "bias"), ("batch_stats", "mean"), ("batch_stats", "var")}
        if family == "ResNet"
        else {("params", "scale"), ("params", "bias")}
      )
    if needed and needed - have:
      missing = sorted(f"{c}/{n}" for c, n in needed - have)
      raise ValueError(
        f"layer {'/'.join(layer)} lacks {missing} in the state dict; pass the whole "
        "state_dict() of the torchvision model (buffers included)."
      )


_RESNET_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(\w+)$")


def resnet_variables(state_dict: Mapping[str, Any]) -> Variables:
  """Variables of the registry ResNet (``stem="imagenet"``) from a torchvision ResNet.

  Args:
    state_dict: torchvision ``resnet18``/``resnet34``/``resnet50`` (or any
      ``torchvision.models.resnet.ResNet``) state dict as numpy arrays.

  Returns:
    ``{"params": …, "batch_stats": …}`` for ``sap_jax.models.get("resnet50",
    num_classes=fc.out_features, stem="imagenet")`` (ResNet-18/34 alike).

  Raises:
    ValueError: an entry that is not part of a torchvision ResNet, a BatchNorm with a
      missing member, or a weight of the wrong rank.
  """
  sd = _arrays(state_dict)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  unknown = []
  for name, value in sd.items():
    if name.endswith("num_batches_tracked"):
      continue
    if name == "conv1.weight":
      flat[("params", "stem_conv", "kernel")] = _conv_kernel(value, name)
    elif name.startswith("bn1.") and name[4:] in _BN_FIELDS:
      col, leaf = _BN_FIELDS[name[4:]]
      flat[(col, "stem_bn", leaf)] = _f32(value)
    elif name == "fc.weight":
      flat[("params", "head", "kernel")] = _dense_kernel(value, name)
    elif name == "fc.bias":
      flat[("params", "head", "bias")] = _f32(value)
    elif m := _RESNET_BLOCK.match(name):
      stage, block, layer, field = m.groups()
      block_name = f"stage{stage}_block{int(block) + 1}"
      if layer in ("downsample.0", "downsample.1"):
        layer = "conv_proj" if layer == "downsample.0" else "norm_proj"
      if layer.startswith("conv") and field == "weight":
        flat[("params", block_name, layer, "kernel")] = _conv_kernel(value, name)
      elif not layer.startswith("conv") and field in _BN_FIELDS:
        col, leaf = _BN_FIELDS[field]
        flat[(col, block_name, layer, leaf)] = _f32(value)
      else:
        unknown.append(name)
    else:
      unknown.append(name)
  _refuse_unknown(unknown, "ResNet")
  _require_complete(flat, "ResNet")
  return _nest(flat)


_VIT_LAYER = re.compile(r"encoder\.layers\.encoder_layer_(\d+)\.(.+)$")
_VIT_LAYER_NAMES = {
  "ln_1": "ln1",
  "ln_2": "ln2",
  "mlp.0": "mlp/fc1",
  "mlp.3": "mlp/fc2",
  "mlp.linear_1": "mlp/fc1",
  "mlp.linear_2": "mlp/fc2",
  "self_attention.out_proj": "attn/out",
}


def vit_variables(state_dict: Mapping[str, Any], *, num_heads: int) -> Variables:
  """Variables of the registry ViT from a torchvision ``VisionTransformer``.

  Args:
    state_dict: torchvision ``vit_b_16`` (or any ``VisionTransformer`` built without
      ``representation_size``) state dict as numpy arrays.
    num_heads: Attention heads (12 for ViT-B/16); the state dict does not say it.

  Returns:
    ``{"params": …}`` for ``sap_jax.models.get("vit_b16", num_classes=...)`` (or
    ``"vit"`` with the same sizes), initialised on images of the size the
    position embedding was trained for.

  Raises:
    ValueError: an entry that is not part of such a ViT (``heads.pre_logits`` included),
      num_heads not dividing the width, or a weight of the wrong rank.
  """
  if isinstance(num_heads, bool) or not isinstance(num_heads, numbers.Integral) or num_heads < 1:
    raise ValueError(f"num_heads must be a positive int (12 for ViT-B/16), got {num_heads!r}.")
  num_heads = int(num_heads)
  sd = _arrays(state_dict)
  flat: dict[tuple[str, ...], np.ndarray] = {}
  unknown = []

  def linear(path: str, field: str, value: np.ndarray, name: str) -> bool:
    keys = tuple(path.split("/"))
    if field == "weight":
      if keys[-1] in ("ln1", "ln2", "encoder_norm"):
        flat[("params", *keys, "scale")] = _f32(value)
      elif keys[-1] == "out":
        d = value.shape[0]
        flat[("params", *keys, "kernel")] = _dense_kernel(value, name).reshape(
          num_heads, d // num_heads, d
        )
      else:
        flat[("params", *keys, "kernel")] = _dense_kernel(value, name)
    elif field == "bias":
      flat[("params", *keys, "bias")] = _f32(value)
    else:
      return False
    return True

  for name, value in sd.items():
    if name == "class_token":
      flat[("params", "cls")] = _f32(value)
    elif name == "encoder.pos_embedding":
      flat[("params", "pos_embedding")] = _f32(value)
    elif name == "conv_proj.weight":
      flat[("params", "patch_embed", "kernel")] = _conv_kernel(value, name)
    elif name == "conv_proj.bias":
      flat[("params", "patch_embed", "bias")] = _f32(value)
    elif name.startswith("encoder.ln.") and linear("encoder_norm", name[11:], value, name):
      pass
    elif name.startswith("heads.head.") and linear("head", name[11:], value, name):
      pass
    elif m := _VIT_LAYER.match(name):
      i, rest = m.groups()
      block = f"encoderblock_{i}"
      layer, _, field = rest.rpartition(".")
      if layer == "self_attention" and field in ("in_proj_weight", "in_proj_bias"):
        d = value.shape[-1] if field == "in_proj_weight" else value.shape[0] // 3
        if d % num_heads or value.shape[0] != 3 * d:
          raise ValueError(
            f"{name} has shape {value.shape}: expected (3·D, D) / (3·D,) with D divisible "
            f"by num_heads={num_heads}; pass the model's number of heads."
          )
        parts = np.split(value, 3, axis=0)
        for part, proj in zip(parts, ("query", "key", "value")):
          if field == "in_proj_weight":
            kernel = _dense_kernel(part, name).reshape(d, num_heads, d // num_heads)
            flat[("params", block, "attn", proj, "kernel")] = kernel
          else:
            flat[("params", block, "attn", proj, "bias")] = _f32(part).reshape(
              num_heads, d // num_heads
            )
      elif layer in _VIT_LAYER_NAMES and linear(
        f"{block}/{_VIT_LAYER_NAMES[layer]}", field, value, name
      ):
        pass
      else:
        unknown.append(name)
    else:
      unknown.append(name)
  _refuse_unknown(unknown, "VisionTransformer")
  _require_complete(flat, "ViT")
  return _nest(flat)
