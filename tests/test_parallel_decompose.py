"""decompose(workers=…): layers decomposed on several host threads give the very same
decomposition as one after another (bit for bit, every method, consume, TSQR factors,
given bases), in layer order; they really run at once; under jit they are traced one
after another, and so are they inside a thread-local JAX context; directions the inputs
never use keep λ = 0; sweep_alpha(workers=…) matches a sweep over a serial decomposition."""

from __future__ import annotations

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import sap_jax as sj
from sap_jax import decomposition as dcm
from sap_jax import models
from sap_jax import projection as proj
from sap_jax import sweep as sw
from sap_jax.stats.qr import activation_factors
from sap_jax.train import eval_apply_fn
from tests.baseline_cases import leaves_equal as _equal  # same structure, bitwise leaves


@pytest.fixture(scope="module")
def stats(mlp):
  apply_fn, variables, x, _ = mlp
  return sj.activation_stats(apply_fn, variables, [x])


@pytest.mark.parametrize("method", ["eigh", "solve", "auto"])
def test_parallel_equals_serial_bit_for_bit(mlp, stats, method):
  _, variables, _, _ = mlp
  serial = sj.decompose(variables, stats, method=method, n_alphas=9, workers=1)
  for workers in (2, 3, 8):
    par = sj.decompose(variables, stats, method=method, n_alphas=9, workers=workers)
    _equal(par, serial)
    assert par.paths == serial.paths == tuple(stats)
    assert list(par.bases) == list(serial.bases) and list(par.solves) == list(serial.solves)
    assert par.methods == serial.methods


def test_parallel_consume_factors_and_given_bases(mlp, stats):
  apply_fn, variables, x, _ = mlp
  serial = sj.decompose(variables, stats, workers=1)
  owned = dict(sj.activation_stats(apply_fn, variables, [x]))
  used = sj.decompose(variables, owned, consume=True, workers=2)
  assert owned == {}
  _equal(used, serial)
  factors = activation_factors(apply_fn, variables, [x[:32], x[32:]])
  _equal(sj.decompose(variables, factors, workers=3), sj.decompose(variables, factors, workers=1))
  given = {("hidden",): serial.bases[("hidden",)]}
  mixed = sj.decompose(variables, stats, bases=given, workers=2)
  assert mixed.bases[("hidden",)] is given[("hidden",)]
  _equal(mixed, serial)


def test_workers_really_run_at_once_and_results_keep_task_order():
  # Two tasks that each wait for the other: done only if they run concurrently.
  barrier = threading.Barrier(2, timeout=30)

  def task(value):
    barrier.wait()
    return jnp.asarray(value)

  out = sw.run_dearest_first([(1.0, lambda: task(1)), (5.0, lambda: task(2))], workers=2)
  assert [int(v) for v in out] == [1, 2]
  order = []
  serial = sw.run_dearest_first(
    [(c, lambda c=c: order.append(c) or c) for c in (1.0, 9.0, 3.0)], workers=1
  )
  assert serial == [1.0, 9.0, 3.0] and order == [1.0, 9.0, 3.0]  # serial: layer order
  assert 1 <= sw.default_workers() <= sw.max_workers() <= sw.MAX_DEFAULT_WORKERS


def test_under_jit_the_layers_are_traced_one_after_another(mlp, stats):
  _, variables, _, _ = mlp
  for method in ("eigh", "solve"):
    eager = sj.decompose(variables, stats, method=method, workers=1)
    jitted = jax.jit(lambda v, s, m=method: sj.decompose(v, s, method=m, workers=4))(
      variables, stats
    )
    for name in ("bases", "solves", "rotated", "kernels"):
      a, b = getattr(eager, name), getattr(jitted, name)
      assert set(a) == set(b)
      for p in a:
        jax.tree_util.tree_map(
          lambda u, w: np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-6), a[p], b[p]
        )


def test_unused_directions_keep_zero_importance_in_parallel(mlp):
  apply_fn, variables, x, _ = mlp
  x = np.array(x)
  x[:, [2, 7]] = 0.0  # two input features the trusted inputs never use
  stats = sj.activation_stats(apply_fn, variables, [x])
  kernel = np.asarray(variables["params"]["first"]["kernel"])
  for method in ("eigh", "solve"):
    dec = sj.decompose(variables, stats, method=method, workers=3)
    for alpha in (3e4, 1e6):
      new = np.asarray(sj.apply_alpha(variables, dec, alpha)["params"]["first"]["kernel"])
      # K̂ = P K and P e_i = 0 on an unused direction e_i, so rows 2 and 7 vanish.
      assert np.max(np.abs(new[[2, 7]])) <= 1e-6 * np.max(np.abs(kernel))
      assert np.max(np.abs(new[[0, 1, 3]])) > 0.1 * np.max(np.abs(kernel))
  basis = sj.decompose(variables, stats, workers=2).bases[("first",)]
  e = np.eye(10)[[2, 7]].T
  p = np.asarray(proj.projection_matrix(basis, 1e6))
  assert np.max(np.abs(p @ e)) <= 1e-6


def test_workers_bad_input_refused_before_any_work(mlp):
  apply_fn, variables, x, y = mlp
  owned = dict(sj.activation_stats(apply_fn, variables, [x]))
  for bad in (0, -1, 1.5, True, "2"):
    with pytest.raises(ValueError, match="workers must be an int"):
      sj.decompose(variables, owned, consume=True, workers=bad)
  assert set(owned) == {("first",), ("hidden",), ("head",)}  # nothing consumed
  calls = []

  def counting(v, xb):
    calls.append(1)
    return apply_fn(v, xb)

  with pytest.raises(ValueError, match="method"):
    sj.sweep_alpha(counting, variables, owned, [10.0], x, y, method="qr")
  with pytest.raises(ValueError, match="workers must be an int"):
    sj.sweep_alpha(counting, variables, owned, [10.0], x, y, workers=0)
  assert calls == []  # refused before the unchanged model was scored


def test_parallel_sweep_equals_sweep_over_a_serial_decomposition(mlp, stats):
  apply_fn, variables, x, y = mlp
  alphas = [1.0, 30.0, 1e4]
  for method in ("eigh", "auto"):
    dec = sj.decompose(variables, stats, method=method, n_alphas=3, workers=1)
    first = sj.sweep_alpha(apply_fn, variables, dec, alphas, x[32:], y[32:])
    seen = []
    par = sj.sweep_alpha(
      apply_fn,
      variables,
      stats,
      alphas,
      x[32:],
      y[32:],
      method=method,
      workers=3,
      progress=lambda i, k, seen=seen: seen.append((i, k)),
    )
    np.testing.assert_array_equal(par.accuracies, first.accuracies)
    assert (par.best_alpha, par.best_accuracy, par.baseline_accuracy) == (
      first.best_alpha,
      first.best_accuracy,
      first.baseline_accuracy,
    )
    assert seen == [(0, 3), (1, 3), (2, 3), (3, 3)]


def test_a_thread_local_jax_context_keeps_everything_in_the_calling_thread(mlp):
  # `with jax.enable_x64(True)` holds for the calling thread only: a worker thread would
  # see float32 and silently decompose the float64 statistics in float32.
  apply_fn, variables, x, y = mlp
  assert sw.threads_share_context()
  with jax.enable_x64(True):
    assert not sw.threads_share_context()
    stats64 = sj.activation_stats(apply_fn, variables, [x], dtype=jnp.float64)
    par = sj.decompose(variables, stats64, workers=4)
    ser = sj.decompose(variables, stats64, workers=1)
    assert par.bases[("hidden",)].vectors.dtype == jnp.float64
    _equal(par, ser)
    got = sj.sweep_alpha(apply_fn, variables, stats64, [30.0, 1e4], x[32:], y[32:])
    want = sj.sweep_alpha(apply_fn, variables, ser, [30.0, 1e4], x[32:], y[32:])
    np.testing.assert_array_equal(got.accuracies, want.accuracies)


def test_default_workers_run_a_small_model_serially(mlp, stats, monkeypatch):
  PARALLEL_ABOVE = dcm.PARALLEL_ABOVE  # noqa: N806 (the module's value, restored below)
  variables = mlp[1]
  seen = []
  real = dcm.run_dearest_first

  def spy(tasks, workers):
    seen.append(workers)
    return real(tasks, workers)

  monkeypatch.setattr(dcm, "run_dearest_first", spy)
  monkeypatch.setattr(dcm, "default_workers", lambda: 2)
  sj.decompose(variables, stats)  # tiny layers: far below PARALLEL_ABOVE
  sj.decompose(variables, stats, workers=2)  # an explicit value is obeyed
  monkeypatch.setattr(dcm, "PARALLEL_ABOVE", 0.0)
  sj.decompose(variables, stats)
  assert seen == [1, 2, 2]
  # the digits CNN of the demo and the tables (d up to 576) stays on one thread
  model = models.get("cnn", 10, width=32)
  x = np.zeros((2, 8, 8, 1), np.float32)
  cnn = model.init(jax.random.PRNGKey(0), x)
  cnn_stats = sj.activation_stats(eval_apply_fn(model), cnn, [x])
  monkeypatch.setattr(dcm, "PARALLEL_ABOVE", PARALLEL_ABOVE)
  sj.decompose(cnn, cnn_stats)
  assert seen[-1] == 1
