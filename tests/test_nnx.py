"""sap_jax.nnx: SAP on Flax NNX models, against slow references written here."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import sap_jax
import sap_jax.nnx as snnx
from sap_jax.compile_cache import cache_sizes
from sap_jax.nnx.layers import skipped
from sap_jax.stats.observe import LiftedTransformError
from tests.sap_reference import im2col
from tests.stats_cases import CONV_CASES, conv_input


class Net(nnx.Module):
  """Grouped strided conv → BatchNorm → mean → nnx.List of Linear → Dropout."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(4, 6, (3, 3), strides=2, padding=1, feature_group_count=2, rngs=rngs)
    self.bn = nnx.BatchNorm(6, rngs=rngs)
    self.blocks = nnx.List([nnx.Linear(6, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.bn(self.conv(x))).mean((1, 2))
    h = self.drop(jax.nn.relu(self.blocks[0](h)))
    return self.blocks[1](h)


def _net():
  model = Net(nnx.Rngs(0))
  model.bn.mean[...] = jnp.linspace(-0.2, 0.3, 6)  # running stats not 0 / 1, so eval mode
  model.bn.var[...] = jnp.linspace(0.5, 2.0, 6)  # and train mode give different inputs
  return model


X = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (40, 7, 8, 4)))
Y = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (40,), 0, 3))


def _features(model, x, p_conv=None):
  """The eval-mode input of ``blocks[0]``, in float64 numpy: the conv as Σ (patch · P)·K
  over loop im2col patches, BatchNorm on its running averages, ReLU, spatial mean."""
  ck = np.asarray(model.conv.kernel[...], np.float64)  # (3, 3, 2, 6): 2 groups
  rows, out_shape = im2col(x, (3, 3), 2, [(1, 1), (1, 1)])  # (n, 4·9), channel-major
  outs = []
  for g in range(2):
    rg = rows[:, g * 18 : (g + 1) * 18]
    if p_conv is not None:
      rg = rg @ np.asarray(p_conv, np.float64)[g]
    outs.append(np.einsum("rcab,abco->ro", rg.reshape(-1, 2, 3, 3), ck[..., g * 3 : (g + 1) * 3]))
  h = np.concatenate(outs, 1) + np.asarray(model.conv.bias[...])
  bn = model.bn
  h = (h - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon)
  h = h * np.asarray(bn.scale[...]) + np.asarray(bn.bias[...])
  return np.maximum(h, 0).reshape(x.shape[0], *out_shape, 6).mean((1, 2)), rows


def _reference_forward(model, x, proj=None):
  """The eval-mode forward of `Net`, each layer's input multiplied by its P (``proj``:
  path → matrix), every layer keeping its ORIGINAL kernel."""
  proj = proj or {}
  h, _ = _features(model, x, proj.get(("conv",)))
  for i, layer in enumerate(model.blocks):
    if ("blocks", i) in proj:
      h = h @ np.asarray(proj[("blocks", i)], np.float64)
    h = h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...])
    if i == 0:
      h = np.maximum(h, 0)
  return h


def _reference_grams(model, x):
  """path → C = RᵀR of each layer's eval-mode input rows (per group for the conv)."""
  h0, rows = _features(model, x)
  b0 = model.blocks[0]
  h1 = np.maximum(h0 @ np.asarray(b0.kernel[...], np.float64) + np.asarray(b0.bias[...]), 0)
  conv = np.stack([rows[:, :18].T @ rows[:, :18], rows[:, 18:].T @ rows[:, 18:]])
  return {("conv",): conv, ("blocks", 0): h0.T @ h0, ("blocks", 1): h1.T @ h1}


def test_reference_forward_is_the_eval_model():
  model = _net()
  clone = nnx.merge(*nnx.split(model))
  clone.eval()
  np.testing.assert_allclose(_reference_forward(model, X), clone(X), rtol=1e-4, atol=1e-5)


def test_stats_keyed_by_graph_paths_match_reference_in_eval_mode():
  model = _net()
  stats = snnx.activation_stats(model, sap_jax.batched(X, 16))
  assert list(stats) == [("conv",), ("blocks", 0), ("blocks", 1)]
  want = _reference_grams(model, X)
  for path, s in stats.items():
    np.testing.assert_allclose(s.gram, want[path], rtol=2e-4, atol=2e-4)
  assert float(stats[("conv",)].count) == 40 * 4 * 4  # 4×4 output positions
  assert stats[("conv",)].layout.groups == 2
  # The user's model is still in train mode and unchanged.
  assert model.drop.deterministic is False and model.bn.use_running_average is False


def test_alpha_one_closed_form_and_projected_inputs_identity():
  model = _net()
  before = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param, nnx.BatchStat))
  stats = snnx.activation_stats(model, sap_jax.batched(X, 16))
  grams = _reference_grams(model, X)
  # α = 1: λ = σ̃, so P = C / tr C.
  p1 = sap_jax.projections(stats, 1.0)
  for path, g in grams.items():
    tr = np.trace(g, axis1=-2, axis2=-1)[..., None, None]
    np.testing.assert_allclose(p1[path].matrix, g / tr, rtol=1e-3, atol=1e-5)
  # Any α: the corrected model == the original model with projected layer inputs.
  proj = sap_jax.projections(stats, 30.0)
  corrected = snnx.project(model, proj)
  corrected.eval()
  want = _reference_forward(model, X, {p: q.matrix for p, q in proj.items()})
  np.testing.assert_allclose(corrected(X), want, rtol=1e-3, atol=1e-4)
  # The user's model and its state are untouched; the copy has the user's mode.
  after = jax.tree_util.tree_map(np.asarray, nnx.state(model, nnx.Param, nnx.BatchStat))
  jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
  assert snnx.project(model, proj).drop.deterministic is False
  # decompose → apply_alpha gives the same model.
  via = snnx.apply_alpha(model, snnx.decompose(model, stats), 30.0)
  np.testing.assert_allclose(via.blocks[1].kernel[...], corrected.blocks[1].kernel[...], atol=1e-5)


def test_run_sap_matches_the_linen_core_and_compiles_once():
  model = _net()
  kw = dict(n_trusted=24, alphas=(1.0, 10.0, 1e3), batch_size=16)
  r = snnx.run_sap(model, X, Y, X[:20], Y[:20], **kw)
  apply_fn, variables = snnx.functional(model)
  core = sap_jax.run_sap(apply_fn, variables, X, Y, X[:20], Y[:20], **kw)
  np.testing.assert_array_equal(r.trusted_indices, core.trusted_indices)
  np.testing.assert_array_equal(r.sweep.accuracies, core.sweep.accuracies)
  assert r.alpha == core.alpha and set(r.layers) == {"conv", "blocks/0", "blocks/1"}
  assert set(r.timings) == {"scores", "stats", "sweep", "project", "total"}
  assert r.model is not model and isinstance(r.model, Net)
  # The returned model is the one the sweep scored at its α.
  want = r.sweep.best_accuracy
  assert snnx.evaluate(r.model, X[:20], Y[:20])["accuracy"] == pytest.approx(want)
  # sweep_alpha and per_example_loss on the model directly.
  s = snnx.sweep_alpha(model, r.decomposition, kw["alphas"], X[:20], Y[:20])
  np.testing.assert_array_equal(s.accuracies, r.sweep.accuracies)
  losses = snnx.per_example_loss(model, X, Y)
  np.testing.assert_allclose(losses, sap_jax.per_example_loss(apply_fn, variables, X, Y))
  # A second run on an equal model compiles nothing.
  sizes = cache_sizes()
  snnx.run_sap(_net(), X, Y, X[:20], Y[:20], **kw)
  assert cache_sizes() == sizes


def test_exclude_matches_integer_path_elements():
  model = _net()
  r = snnx.run_sap(model, X, Y, X, Y, n_trusted=16, alphas=(1.0,), exclude=("blocks/1",))
  assert set(r.layers) == {"conv", "blocks/0"}
  assert r.skipped == {"blocks/1": "excluded by pattern 'blocks/1'"}
  np.testing.assert_array_equal(r.model.blocks[1].kernel[...], model.blocks[1].kernel[...])


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_geometries_match_loop_im2col(case):
  kw = dict(CONV_CASES[case])
  conv = nnx.Conv(4, 6, rngs=nnx.Rngs(0), **kw)
  x = conv_input(case)
  stats = snnx.activation_stats(conv, [x])
  padding = kw.get("padding", "SAME")
  ks = kw["kernel_size"]
  if isinstance(padding, int):
    padding = [(padding, padding)] * len(ks)
  rows, _ = im2col(
    x, ks, kw.get("strides", 1), padding, kw.get("kernel_dilation", 1), kw.get("input_dilation", 1)
  )
  groups = kw.get("feature_group_count", 1)
  d = rows.shape[1] // groups
  want = np.stack(
    [rows[:, g * d : (g + 1) * d].T @ rows[:, g * d : (g + 1) * d] for g in range(groups)]
  )
  got = np.asarray(stats[()].gram).reshape(want.shape)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding", ["CIRCULAR", "REFLECT", "CAUSAL"])
def test_padding_modes_equal_the_linen_twin(padding):
  ks = (3,) if padding == "CAUSAL" else (3, 2)
  x = np.asarray(
    jax.random.normal(jax.random.PRNGKey(3), (2, 9, 3) if padding == "CAUSAL" else (2, 6, 5, 3))
  )
  conv = nnx.Conv(3, 4, ks, padding=padding, rngs=nnx.Rngs(0))
  got = snnx.activation_stats(conv, [x])[()]
  linen = nn.Conv(4, ks, padding=padding)
  variables = {"params": {"kernel": conv.kernel[...], "bias": conv.bias[...]}}
  want = sap_jax.activation_stats(linen.apply, variables, [x])[()]
  np.testing.assert_allclose(got.gram, want.gram, rtol=1e-6)
  # The twin's layout reads the NNX kernel: the corrected kernel is P·K in it.
  corrected = snnx.project(conv, sap_jax.projections({(): got}, 10.0))
  k = sap_jax.project_params(variables, sap_jax.projections({(): want}, 10.0))["params"]["kernel"]
  np.testing.assert_allclose(corrected.kernel[...], k, rtol=1e-5, atol=1e-6)


class _Attention(nnx.Module):
  def __init__(self, rngs):
    self.attn = nnx.MultiHeadAttention(2, 8, qkv_features=8, decode=False, rngs=rngs)
    self.head = nnx.LinearGeneral((5, 8), 3, axis=(-2, -1), rngs=rngs)

  def __call__(self, x):
    return self.head(self.attn(x))


def test_attention_projections_and_linear_general():
  model = _Attention(nnx.Rngs(0))
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(4), (6, 5, 8)))
  stats = snnx.activation_stats(model, [x])
  assert list(stats) == [
    ("attn", "query"),
    ("attn", "key"),
    ("attn", "value"),
    ("attn", "out"),
    ("head",),
  ]
  tokens = x.reshape(-1, 8)
  for name in ("query", "key", "value"):  # self-attention: every projection sees x's tokens
    np.testing.assert_allclose(stats[("attn", name)].gram, tokens.T @ tokens, rtol=1e-4, atol=1e-4)
  # out: a LinearGeneral over (heads, head_dim); head: over (tokens, features).
  assert stats[("attn", "out")].layout.kernel_shape == (2, 4, 8)
  feats = np.asarray(model.attn(x)).reshape(6, -1)
  np.testing.assert_allclose(stats[("head",)].gram, feats.T @ feats, rtol=1e-3, atol=1e-3)
  corrected = snnx.project(model, sap_jax.projections(stats, 100.0))
  assert corrected.attn.out.kernel.shape == (2, 4, 8)


def test_works_under_nnx_jit():
  model = _net()
  stats = snnx.activation_stats(model, sap_jax.batched(X, 16))
  proj = sap_jax.projections(stats, 30.0)
  corrected = snnx.project(model, proj)
  corrected.eval()

  @nnx.jit
  def jitted_project(m, p):
    out = snnx.project(m, p)
    out.eval()
    return out(X)

  np.testing.assert_allclose(jitted_project(model, proj), corrected(X), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(corrected, X), corrected(X), atol=1e-5)


class _Scanned(nnx.Module):
  def __init__(self, rngs, transform):
    self.dense = nnx.Linear(4, 4, rngs=rngs)
    self.transform = transform

  def __call__(self, x):
    if self.transform == "remat":
      return nnx.remat(lambda m, v: m(v))(self.dense, x)
    if self.transform == "vmap":
      return nnx.vmap(lambda m, v: m(v), in_axes=(None, 0))(self.dense, x)
    return jax.lax.scan(lambda c, _: (self.dense(c), None), x, None, length=2)[0]


@pytest.mark.parametrize("transform", ["remat", "vmap", "scan"])
def test_lifted_transforms_are_refused_naming_the_layer(transform):
  model = _Scanned(nnx.Rngs(0), transform)
  with pytest.raises(LiftedTransformError, match="'dense'"):
    snnx.activation_stats(model, [np.ones((3, 4), np.float32)])


def test_bad_inputs_name_the_fix():
  with pytest.raises(TypeError, match="flax.nnx.Module"):
    snnx.activation_stats({"params": {}}, [X])
  masked = nnx.Conv(4, 2, (3, 3), mask=jnp.ones((3, 3, 4, 2)), rngs=nnx.Rngs(0))
  with pytest.raises(snnx.UnsupportedLayerError, match="mask"):
    snnx.activation_stats(masked, [X[:2]])


class _Mixed(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(10, 4, rngs=rngs)
    self.up = nnx.ConvTranspose(4, 4, (2,), transpose_kernel=True, rngs=rngs)
    self.layers = nnx.List([nnx.Linear(4, 4, rngs=rngs), nnx.Linear(4, 3, rngs=rngs)])
    self.spare = nnx.Linear(4, 4, rngs=rngs)

  def __call__(self, tokens):
    h = self.up(self.embed(tokens))
    return self.layers[1](self.layers[0](h).mean(1))


def test_every_skipped_layer_is_listed_with_its_reason():
  model = _Mixed(nnx.Rngs(0))
  tokens = np.arange(6).reshape(1, 6)
  apply_fn, variables = snnx.functional(model)
  got = skipped(model, apply_fn, variables, tokens, [("layers", 0)], exclude=("layers/1",))
  assert got == {
    "embed": "layer type Embed is not supported (an index lookup: its input is a token id, "
    "not an activation to project)",
    "up": "layer type ConvTranspose is not supported (with transpose_kernel=True, a kernel "
    "mask or CIRCULAR padding)",
    "layers/1": "excluded by pattern 'layers/1'",
    "spare": "never called in the forward",
  }


@pytest.mark.parametrize(
  "kw",
  [
    dict(kernel_size=(3, 3), strides=2, padding="SAME"),
    dict(kernel_size=(2, 3), strides=(2, 1), padding="VALID", kernel_dilation=2),
  ],
)
def test_conv_transpose_equals_the_linen_layer(kw):
  # The Linen ConvTranspose is checked against loop im2col in test_stats_conv.
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (2, 4, 5, 3)))
  layer = nnx.ConvTranspose(3, 4, rngs=nnx.Rngs(0), **kw)
  got = snnx.activation_stats(layer, [x])[()]
  linen = nn.ConvTranspose(4, **kw)
  variables = {"params": {"kernel": layer.kernel[...], "bias": layer.bias[...]}}
  np.testing.assert_allclose(linen.apply(variables, x), layer(x), rtol=1e-5, atol=1e-5)
  want = sap_jax.activation_stats(linen.apply, variables, [x])[()]
  np.testing.assert_allclose(got.gram, want.gram, rtol=1e-6)
  corrected = snnx.project(layer, sap_jax.projections({(): got}, 10.0))
  k = sap_jax.project_params(variables, sap_jax.projections({(): want}, 10.0))["params"]["kernel"]
  np.testing.assert_allclose(corrected.kernel[...], k, rtol=1e-5, atol=1e-6)
