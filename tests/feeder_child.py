"""Child of tests/test_feeder.py (8 CPU devices): the feeder on a mesh, and every streamed
phase on 8 devices against one device, with N not divisible by the devices."""

import functools

import jax
import numpy as np

import sap_jax as sj
from sap_jax import sharding as shd
from sap_jax import source_pipeline, streaming
from sap_jax.data.feeder import feed, feed_arrays
from sap_jax.data.sources import ArraySource
from sap_jax.evaluation import fit_fraction, predict_logits
from sap_jax.train import train_model
from sap_jax.train_config import TrainConfig
from sap_jax.trusted import trusted_set
from tests.conftest import SmallMLP


def main():
  assert jax.device_count() == 8
  mesh8 = shd.data_mesh()
  one = shd.data_mesh(jax.devices()[:1])
  rng = np.random.default_rng(0)
  n = 45  # not a multiple of 8
  x = rng.normal(size=(n, 10)).astype(np.float32)
  model = SmallMLP()
  variables = model.init(jax.random.PRNGKey(1), x[:1])
  apply_fn = functools.partial(model.apply, train=False)
  y = np.array(np.argmax(apply_fn(variables, x), -1))
  y[::4] = (y[::4] + 1) % 4  # some labels the model disagrees with
  src = ArraySource(x, y)

  # the feeder: 16-sample batches, 2 per device, the tail padded and masked
  batches = list(feed(src, 13, mesh=mesh8))  # 13 → 16
  assert [b.x.shape for b in batches] == [(16, 10)] * 3
  for b in batches:
    assert b.x.sharding.spec[0] == shd.DATA_AXIS
    shard_rows = sorted(s.index[0].start for s in b.x.addressable_shards)
    assert shard_rows == list(range(0, 16, 2))
  mask = np.concatenate([np.asarray(b.mask) for b in batches])
  np.testing.assert_array_equal(mask, np.arange(48) < n)
  got = np.concatenate([np.asarray(b.x) for b in batches])[:n]
  np.testing.assert_array_equal(got, x)

  # every phase: 8 devices equal one device
  for kw in ({}, {"class_balanced": True}):
    t8 = streaming.lowest_loss(apply_fn, variables, src, 20, mesh=mesh8, batch_size=16, **kw)
    t1 = streaming.lowest_loss(apply_fn, variables, src, 20, mesh=one, batch_size=16, **kw)
    np.testing.assert_array_equal(t8, t1)
    np.testing.assert_array_equal(t1, trusted_set(apply_fn, variables, x, y, 20, **kw))
  e8 = streaming.evaluate(apply_fn, variables, src, mesh=mesh8, batch_size=16)
  e1 = sj.evaluate(apply_fn, variables, x, y)
  assert e8["accuracy"] == e1["accuracy"], (e8, e1)
  np.testing.assert_allclose(e8["loss"], e1["loss"], rtol=1e-5)
  np.testing.assert_allclose(
    streaming.predict_logits(apply_fn, variables, src, mesh=mesh8, batch_size=16),
    predict_logits(apply_fn, variables, x),
    rtol=1e-5,
    atol=1e-6,
  )
  opts = dict(n_trusted=30, alphas=[3.0, 30.0, 1e4], batch_size=16, eval_splits={"test": src})
  r8 = source_pipeline.run_sap(apply_fn, variables, src, src, mesh=mesh8, **opts)
  r1 = sj.run_sap(apply_fn, variables, x, y, x, y, **{**opts, "eval_splits": {"test": (x, y)}})
  np.testing.assert_array_equal(r8.trusted_indices, r1.trusted_indices)
  assert r8.alpha == r1.alpha, (r8.alpha, r1.alpha)
  np.testing.assert_array_equal(r8.sweep.accuracies, r1.sweep.accuracies)
  for a, b in zip(jax.tree_util.tree_leaves(r8.variables), jax.tree_util.tree_leaves(r1.variables)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for name, layer in r1.layers.items():
    assert r8.layers[name]["rows"] == layer["rows"], name

  # training: data-parallel over 8 devices equals one device
  cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=0.1)
  a = train_model(model, src, None, cfg, mesh=mesh8, progress=False)
  b = train_model(model, x, y, cfg, progress=False)
  for u, v in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
  print("feeder child: ok")
  global_arrays(apply_fn, variables, x, y)
  print("global arrays: ok")
  host_arrays_on_a_mesh(model, apply_fn, variables, x, y, r1)
  print("host arrays on a mesh: ok")


def _fields(batches):
  return [
    (np.asarray(b.x), None if b.y is None else np.asarray(b.y), np.asarray(b.mask),
     np.asarray(b.index), b.start, b.real)
    for b in batches
  ]  # fmt: skip


def _same_batches(got, want):
  assert len(got) == len(want)
  for g, w in zip(got, want):
    for u, v in zip(g, w):
      np.testing.assert_array_equal(u, v)


def global_arrays(apply_fn, variables, x, y):
  """Global arrays through the feeder: the same batches as their host copies, and every
  array phase equal to one device, N not a multiple of the devices (a 5-device mesh:
  JAX builds no array of 45 samples sharded 8 ways) and batches that do not divide N."""
  mesh8 = shd.data_mesh()
  xs, ys = shd.shard_batch(x[:40], mesh8), shd.shard_batch(y[:40], mesh8)
  for kw in ({}, {"indices": np.array([3, 39, 0, 17, 17, 8, 22, 31, 5, 11, 1])}):
    got = list(feed_arrays(xs, ys, 12, **kw))  # 12 → 16: 2 per device
    assert all(b.x.sharding.spec[0] == shd.DATA_AXIS for b in got)
    assert all(b.y.sharding == b.mask.sharding == b.index.sharding for b in got)
    want = _fields(feed_arrays(x[:40], y[:40], 12, mesh=mesh8, **kw))
    _same_batches(_fields(got), want)
    _same_batches(want, _fields(feed(ArraySource(x[:40], y[:40]), 12, mesh=mesh8, **kw)))
    _same_batches(_fields(feed_arrays(xs, y[:40], 12, **kw)), want)  # host labels
  mesh5 = shd.data_mesh(jax.devices()[:5])
  n = len(x)  # 45: 9 per device of mesh5, not a multiple of 8
  cases = ((shd.shard_batch(x, mesh5), shd.shard_batch(y, mesh5), 16), (xs, ys, 12))
  for xg, yg, bs in cases:
    m = xg.shape[0]
    e = sj.evaluate(apply_fn, variables, xg, yg, batch_size=bs)
    e1 = sj.evaluate(apply_fn, variables, x[:m], y[:m], batch_size=bs)
    assert e["accuracy"] == e1["accuracy"], (e, e1)
    np.testing.assert_allclose(e["loss"], e1["loss"], rtol=1e-5)
    np.testing.assert_allclose(
      predict_logits(apply_fn, variables, xg, batch_size=bs),
      predict_logits(apply_fn, variables, x[:m], batch_size=bs),
      rtol=1e-5,
      atol=1e-6,
    )
    np.testing.assert_allclose(
      sj.per_example_loss(apply_fn, variables, xg, yg, batch_size=bs),
      sj.per_example_loss(apply_fn, variables, x[:m], y[:m], batch_size=bs),
      rtol=1e-5,
      atol=1e-6,
    )
    scores = ("loss", "curvature", "curvature_published") if bs == 16 else ("loss",)
    for score in scores:  # the curvature scores once: each compiles two gradients
      kw = dict(score=score, batch_size=bs, seed=2)
      t = trusted_set(apply_fn, variables, xg, yg, 20, **kw)
      np.testing.assert_array_equal(t, trusted_set(apply_fn, variables, x[:m], y[:m], 20, **kw))
    mask = np.arange(m) % 3 == 0
    f = fit_fraction(apply_fn, variables, xg, yg, mask)
    assert f == fit_fraction(apply_fn, variables, x[:m], y[:m], mask)
  assert n % 8


def host_arrays_on_a_mesh(model, apply_fn, variables, x, y, r1):
  """Host arrays with ``mesh=``: every phase over 8 devices, 45 samples (no cut), equal to
  one device; ``r1`` is `run_sap` of the same data on one device."""
  mesh8 = shd.data_mesh()
  e = sj.evaluate(apply_fn, variables, x, y, batch_size=16, mesh=mesh8)
  e1 = sj.evaluate(apply_fn, variables, x, y, batch_size=16)
  assert e["accuracy"] == e1["accuracy"], (e, e1)
  np.testing.assert_allclose(e["loss"], e1["loss"], rtol=1e-5)
  np.testing.assert_allclose(
    predict_logits(apply_fn, variables, x, batch_size=16, mesh=mesh8),
    predict_logits(apply_fn, variables, x, batch_size=16),
    rtol=1e-5,
    atol=1e-6,
  )
  mask = np.arange(len(x)) % 3 == 0
  assert fit_fraction(apply_fn, variables, x, y, mask, mesh=mesh8) == fit_fraction(
    apply_fn, variables, x, y, mask
  )
  for score in ("loss", "curvature", "curvature_published"):
    kw = dict(score=score, batch_size=16, seed=2)
    t = trusted_set(apply_fn, variables, x, y, 20, mesh=mesh8, **kw)
    np.testing.assert_array_equal(t, trusted_set(apply_fn, variables, x, y, 20, **kw))
  opts = dict(n_trusted=30, alphas=[3.0, 30.0, 1e4], batch_size=16, eval_splits={"test": (x, y)})
  r8 = sj.run_sap(apply_fn, variables, x, y, x, y, mesh=mesh8, **opts)
  np.testing.assert_array_equal(r8.trusted_indices, r1.trusted_indices)
  assert r8.alpha == r1.alpha, (r8.alpha, r1.alpha)
  np.testing.assert_array_equal(r8.sweep.accuracies, r1.sweep.accuracies)
  np.testing.assert_array_equal(
    r8.sweep.splits["test"].accuracies, r1.sweep.splits["test"].accuracies
  )
  for a, b in zip(jax.tree_util.tree_leaves(r8.variables), jax.tree_util.tree_leaves(r1.variables)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
  for name, layer in r1.layers.items():
    assert r8.layers[name]["rows"] == layer["rows"], name
  # training with a validation split: the same steps and validation figures
  cfg = TrainConfig(epochs=2, batch_size=16, learning_rate=0.1)
  a = train_model(model, x, y, cfg, x_val=x[:13], y_val=y[:13], mesh=mesh8, progress=False)
  b = train_model(model, x, y, cfg, x_val=x[:13], y_val=y[:13], progress=False)
  for u, v in zip(jax.tree_util.tree_leaves(a.variables), jax.tree_util.tree_leaves(b.variables)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-4, atol=1e-5)
  assert [h["val_accuracy"] for h in a.history] == [h["val_accuracy"] for h in b.history]


if __name__ == "__main__":
  main()
