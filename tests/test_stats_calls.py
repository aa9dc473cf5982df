"""sap_jax.stats.calls: the shape-only trace of a forward's layer calls finds every
covered layer with its rows per call, refuses a lifted transform (Linen and NNX) before
anything is compiled, naming the layer and the transform; a layer called twice per
forward is reported with its calls and rows (and `activation_stats` warns)."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import nnx

import sap_jax as sj
import sap_jax.nnx as snnx
from sap_jax.compile_cache import lowered_programs
from sap_jax.stats.calls import RepeatedLayer, layer_calls, repeated_layers
from sap_jax.stats.observe import LiftedTransformError


class _TwoCallHead(nn.Module):
  """big_vision's ViT pattern: one ``head`` applied to the tokens and to their mean."""

  @nn.compact
  def __call__(self, x, train=False):
    tokens = nn.Dense(6, name="embed")(x)  # (B, T, 6)
    head = nn.Dense(3, name="head")
    head(tokens)  # computed, unused: 98 % of the head's rows come from here
    return head(tokens.mean(1))


class _Body(nn.Module):
  @nn.compact
  def __call__(self, c, _):
    return nn.Dense(4)(c), None


class _Lifted(nn.Module):
  """A Dense, then a Dense inside ``transform`` (nn.scan, nn.remat or nn.vmap)."""

  transform: str

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Dense(4)(x)
    if self.transform == "scan":
      scan = nn.scan(_Body, variable_axes={"params": 0}, split_rngs={"params": True}, length=2)
      return scan()(x, None)[0]
    if self.transform == "remat":
      return nn.remat(nn.Dense)(4)(x)
    vmap = nn.vmap(
      nn.Dense,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=None,
      out_axes=0,
      axis_size=2,
    )
    return vmap(4)(x).mean(0)


def _two_call_setup():
  model = _TwoCallHead()
  x = np.random.default_rng(0).normal(size=(4, 5, 2)).astype(np.float32)
  return model, x, model.init(jax.random.PRNGKey(0), x)


def test_layer_calls_counts_rows_per_call_without_compiling():
  model, x, v = _two_call_setup()
  with lowered_programs() as lowered:
    calls = layer_calls(model.apply, v, x)
  assert lowered == []
  assert calls == {("embed",): (20,), ("head",): (20, 4)}  # B·T rows, then B rows
  assert repeated_layers(calls) == [RepeatedLayer("head", 2, (20, 4))]
  assert layer_calls(model.apply, v, jax.ShapeDtypeStruct(x.shape, x.dtype)) == calls


def test_activation_stats_warns_about_a_layer_called_twice():
  model, x, v = _two_call_setup()
  with pytest.warns(UserWarning, match=r"'head' 2 times \(rows per call 20, 4\)"):
    stats = sj.activation_stats(model.apply, v, [x])
  assert float(stats[("head",)].count) == 24  # still the sum of both calls' rows


@pytest.mark.parametrize(
  "transform, layer",
  [("scan", "Scan_Body_0/Dense_0"), ("remat", "CheckpointDense_0"), ("vmap", "VmapDense_0")],
)
def test_lifted_transform_refused_by_the_shape_only_trace(transform, layer):
  model = _Lifted(transform)
  x = np.ones((3, 4), np.float32)
  v = model.init(jax.random.PRNGKey(0), x)
  with lowered_programs() as lowered:
    with pytest.raises(LiftedTransformError, match=f"{layer!r} runs inside nn.{transform}"):
      layer_calls(model.apply, v, x)
  assert lowered == []


class _Stack(nnx.Module):
  """Layers stacked by nnx.vmap and run by nnx.scan (the NNX scan-over-layers idiom)."""

  def __init__(self, rngs):
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
      return nnx.Linear(4, 4, rngs=rngs)

    self.blocks = make(rngs)
    self.head = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def body(h, block):
      return block(h)

    return self.head(body(x, self.blocks))


def test_nnx_scan_over_stacked_layers_names_the_stack():
  model = _Stack(nnx.Rngs(0))
  assert model.blocks.kernel.shape == (3, 4, 4)
  with pytest.raises(
    LiftedTransformError,
    match=r"layer 'blocks' runs inside nnx.scan or nnx.vmap over its stacked \(4, 4\) kernels",
  ):
    snnx.activation_stats(model, [np.ones((2, 4), np.float32)])
