"""activation_stats: interception, conv patch layout, streaming, shared layers, errors."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from tests.sap_reference import im2col

CONV_CASES = {
    "plain": dict(kernel_size=(3, 3)),
    "stride_pad": dict(kernel_size=(3, 3), strides=2, padding=1),
    "valid": dict(kernel_size=(2, 3), padding="VALID"),
    "dilation": dict(kernel_size=(3, 3), kernel_dilation=2, padding=((2, 1), (0, 3))),
    "groups": dict(kernel_size=(3, 3), feature_group_count=2, strides=(1, 2)),
    "input_dilation": dict(kernel_size=(2, 2), input_dilation=2, padding=((0, 0), (1, 1))),
    "conv1d": dict(kernel_size=(5,), strides=2, padding="SAME"),
}


def _single_layer(layer):
  class One(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return layer(name="layer")(x)

  return One()


def _input(case, rng=0, n=3):
  shape = (n, 9, 4) if case == "conv1d" else (n, 7, 8, 4)
  return np.asarray(jax.random.normal(jax.random.PRNGKey(rng), shape))


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_patches_match_loop_im2col(case):
  kw = CONV_CASES[case]
  conv = nn.Conv(features=6, **kw)
  x = _input(case)
  got = np.asarray(sj.conv_patches(conv, jnp.asarray(x)))
  padding = kw.get("padding", "SAME")
  ks = kw["kernel_size"]
  if isinstance(padding, int):
    padding = [(padding, padding)] * len(ks)
  want, _ = im2col(
      x, ks, kw.get("strides", 1), padding, kw.get("kernel_dilation", 1), kw.get("input_dilation", 1)
  )
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_gram_is_patch_gram(case):
  kw = CONV_CASES[case]
  model = _single_layer(functools.partial(nn.Conv, features=6, **kw))
  x = _input(case)
  variables = model.init(jax.random.PRNGKey(1), x)
  stats = sj.activation_stats(model.apply, variables, [x])
  s = stats[("layer",)]
  padding = kw.get("padding", "SAME")
  if isinstance(padding, int):
    padding = [(padding, padding)] * len(kw["kernel_size"])
  rows, _ = im2col(
      x, kw["kernel_size"], kw.get("strides", 1), padding, kw.get("kernel_dilation", 1), kw.get("input_dilation", 1)
  )
  groups = kw.get("feature_group_count", 1)
  d = rows.shape[1] // groups
  want = np.stack([rows[:, g * d : (g + 1) * d].T @ rows[:, g * d : (g + 1) * d] for g in range(groups)])
  got = np.asarray(s.gram).reshape(want.shape)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  assert float(s.count) == rows.shape[0]
  assert s.layout.groups == groups and s.layout.dim == d


def test_circular_and_causal_padding_match_flax_conv():
  # The patches of a padded conv, multiplied by the flattened kernel, must give
  # the layer's own output: this checks the flax-specific padding modes.
  for padding, shape in [("CIRCULAR", (2, 6, 5, 3)), ("CAUSAL", (2, 9, 3)), ("REFLECT", (2, 6, 5, 3))]:
    ks = (3,) if len(shape) == 3 else (3, 2)
    conv = nn.Conv(4, ks, padding=padding, use_bias=False)
    x = jax.random.normal(jax.random.PRNGKey(2), shape)
    v = conv.init(jax.random.PRNGKey(3), x)
    k = np.asarray(v["params"]["kernel"])
    n_in = len(ks) + 1
    perm = (n_in - 1,) + tuple(range(n_in - 1)) + (n_in,)
    flat = k.transpose(perm).reshape(-1, 4)
    rows = np.asarray(sj.conv_patches(conv, x))
    want = np.asarray(conv.apply(v, x)).reshape(-1, 4)
    np.testing.assert_allclose(rows @ flat, want, rtol=1e-4, atol=1e-4)


class _Mixed(nn.Module):
  """Dense on tokens, DenseGeneral over two axes, a shared layer called twice."""

  @nn.compact
  def __call__(self, x, train=False):  # x: (B, L, 6)
    shared = nn.Dense(6, name="shared")
    h = shared(x)
    h = shared(nn.tanh(h))
    q = nn.DenseGeneral((2, 3), axis=-1, name="qkv")(h)  # (B, L, 2, 3)
    o = nn.DenseGeneral(5, axis=(-2, -1), name="out")(q)  # (B, L, 5)
    return nn.Dense(3, name="head")(o.mean(axis=1))


def test_dense_rows_fold_tokens_and_shared_layer_accumulates():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  stats = sj.activation_stats(model.apply, v, [x])
  assert list(stats) == [("shared",), ("qkv",), ("out",), ("head",)]
  # The shared layer sees x and tanh(shared(x)): both calls' 4·5 token rows count.
  h1 = np.asarray(nn.Dense(6).apply({"params": v["params"]["shared"]}, x))
  rows = np.concatenate([x.reshape(-1, 6), np.tanh(h1).reshape(-1, 6)])
  np.testing.assert_allclose(stats[("shared",)].gram, rows.T @ rows, rtol=1e-5, atol=1e-5)
  assert float(stats[("shared",)].count) == 40
  assert stats[("out",)].layout.kernel_shape == (2, 3, 5)
  assert stats[("out",)].layout.dim == 6
  assert stats[("head",)].gram.shape == (5, 5)


def test_streaming_equals_whole_set():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (10, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  whole = sj.activation_stats(model.apply, v, [x])
  streamed = sj.activation_stats(model.apply, v, (x[i : i + 3] for i in range(0, 10, 3)))
  for path in whole:
    np.testing.assert_allclose(streamed[path].gram, whole[path].gram, rtol=1e-5, atol=1e-5)
    assert float(streamed[path].count) == float(whole[path].count)


def test_row_budget_keeps_that_many_rows():
  model = _single_layer(functools.partial(nn.Conv, features=3, kernel_size=(3, 3)))
  x = _input("plain", n=4)
  v = model.init(jax.random.PRNGKey(0), x)
  s = sj.activation_stats(model.apply, v, [x[:2], x[2:]], rows_per_batch=20)
  assert float(s[("layer",)].count) == 40
  # The Gram of 40 rows of the full row set: trace equals the sum of the chosen
  # rows' squared norms, which is at most the full trace.
  full = sj.activation_stats(model.apply, v, [x])
  assert float(jnp.trace(s[("layer",)].gram)) < float(jnp.trace(full[("layer",)].gram))


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_budget_rows_are_the_layers_rows(case):
  # The budget path gathers chosen patches without unfolding the others: they must
  # be exactly those rows of the full unfolding (groups included).
  from sap_jax import stats as st

  conv = nn.Conv(features=6, **CONV_CASES[case])
  x = jnp.asarray(_input(case))
  rows, layout = st.layer_rows(conv, x)
  n = rows.shape[-2]
  index = jnp.asarray(np.random.default_rng(0).permutation(n)[: n // 2])
  got = st._rows_at(conv, x, index, layout)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.take(rows, index, axis=-2)))


def test_row_sampling_is_distinct_and_prefers_real_rows():
  from sap_jax import stats as st

  idx = np.asarray(st._sample_rows(jax.random.PRNGKey(3), 50, 20, jnp.int32(30)))
  assert len(set(idx.tolist())) == 20 and idx.max() < 30  # 30 real rows ≥ budget
  idx = np.asarray(st._sample_rows(jax.random.PRNGKey(3), 50, 20, jnp.int32(12)))
  assert len(set(idx.tolist())) == 20 and set(range(12)) <= set(idx.tolist())


def test_padded_last_batch_shares_one_compilation_and_counts_nothing():
  from sap_jax import stats as st

  model = _single_layer(functools.partial(nn.Conv, features=3, kernel_size=(3, 3)))
  x = _input("plain", n=7)
  v = model.init(jax.random.PRNGKey(0), x)
  before = st._accumulate._cache_size()
  ragged = sj.activation_stats(model.apply, v, [x[:3], x[3:6], x[6:]])
  assert st._accumulate._cache_size() == before + 1  # the tail (1 sample) is padded to 3
  whole = sj.activation_stats(model.apply, v, [x])
  np.testing.assert_allclose(ragged[("layer",)].gram, whole[("layer",)].gram, rtol=1e-5, atol=1e-4)
  assert float(ragged[("layer",)].count) == float(whole[("layer",)].count) == 7 * 56
  # With a budget: the padded tail has 56 real rows < 100, so all of them count
  # (and only them): budgeted(3 + 1 samples) − budgeted(3 samples) = the tail's Gram.
  two = sj.activation_stats(model.apply, v, [x[:3], x[6:]], rows_per_batch=100)
  one = sj.activation_stats(model.apply, v, [x[:3]], rows_per_batch=100)
  tail = sj.activation_stats(model.apply, v, [x[6:]])
  assert float(two[("layer",)].count) == 100 + 56
  np.testing.assert_allclose(
      two[("layer",)].gram - one[("layer",)].gram, tail[("layer",)].gram, rtol=1e-4, atol=1e-3
  )


class _FlattensBatch(nn.Module):
  """Folds the batch into the token axis before a Dense: inputs are not batch-major."""

  @nn.compact
  def __call__(self, x, train=False):  # x: (B, L, 6)
    h = nn.Dense(4, name="tokens")(x.reshape(-1, x.shape[-1]))
    return nn.Dense(3, name="head")(h.reshape(x.shape[0], -1))


def test_not_batch_major_model_is_not_padded():
  model = _FlattensBatch()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (5, 4, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  whole = sj.activation_stats(model.apply, v, [x])
  streamed = sj.activation_stats(model.apply, v, [x[:2], x[2:4], x[4:]])
  for path in whole:
    np.testing.assert_allclose(streamed[path].gram, whole[path].gram, rtol=1e-5, atol=1e-5)
    assert float(streamed[path].count) == float(whole[path].count)


def test_activation_rows_gram_matches_stats():
  model = _Mixed()
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 5, 6)))
  v = model.init(jax.random.PRNGKey(1), x)
  rows = sj.activation_rows(model.apply, v, [x[:2], x[2:]], max_rows=10_000)
  stats = sj.activation_stats(model.apply, v, [x])
  for path, (r, layout) in rows.items():
    assert layout == stats[path].layout
    np.testing.assert_allclose(r.T @ r, stats[path].gram, rtol=1e-5, atol=1e-5)


def test_errors_before_work():
  model = _Mixed()
  x = np.ones((2, 5, 6), np.float32)
  v = model.init(jax.random.PRNGKey(1), x)
  with pytest.raises(ValueError, match="empty"):
    sj.activation_stats(model.apply, v, [])

  class NoLayers(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return x * self.param("w", nn.initializers.ones, (6,))

  nl = NoLayers()
  with pytest.raises(ValueError, match="No nn.Dense"):
    sj.activation_stats(nl.apply, nl.init(jax.random.PRNGKey(0), x), [x])
  bad = jax.tree_util.tree_map(lambda a: a.at[0].set(jnp.nan) if a.ndim else a, v)
  with pytest.raises(ValueError, match="NaN or Inf"):
    sj.activation_stats(model.apply, bad, [x])
  with pytest.raises(ValueError, match="Non-finite activations"):
    sj.activation_stats(model.apply, v, [np.full_like(x, np.inf)])
  with pytest.raises(ValueError, match="x64"):
    sj.activation_stats(model.apply, v, [x], dtype=jnp.float64)
