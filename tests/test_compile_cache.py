"""sap_jax.compile_cache: the core's compiled programs and their compilation counts."""

import numpy as np

from sap_jax import evaluation, trusted
from sap_jax.compile_cache import cache_sizes, compiled_functions


def test_compiled_functions_gather_every_jitted_table():
  """Every SAP-core module that lists programs in a ``JITTED`` dict is gathered (training
  and the baselines are not the correction's programs)."""
  import importlib
  import pkgutil

  import sap_jax

  want = {}
  for info in pkgutil.walk_packages(sap_jax.__path__, "sap_jax."):
    if info.name.endswith("__main__"):  # importing it runs the command line
      continue
    if info.name == "sap_jax.train" or info.name.startswith("sap_jax.baselines"):
      continue
    table = getattr(importlib.import_module(info.name), "JITTED", None)
    if isinstance(table, dict) and not info.ispkg:
      want.update(table)
  fns = compiled_functions()
  assert set(fns) == set(want)
  assert all(fns[name] is fn for name, fn in want.items())
  assert {"evaluation.eval_batch", "stats.qr_update", "spread_eigh.spread"} <= set(fns)
  assert list(fns)[: len(trusted.JITTED)] == list(trusted.JITTED)


def test_cache_sizes_count_compilations_per_program():
  sizes = cache_sizes()
  assert sizes.keys() == compiled_functions().keys()
  assert all(type(n) is int and n >= 0 for n in sizes.values())


def test_a_new_model_compiles_the_eval_batch_once():
  def apply_fn(variables, x):  # a new function object: a new static argument
    return x @ variables["w"]

  rng = np.random.default_rng(0)
  variables = {"w": rng.normal(size=(3, 2)).astype(np.float32)}
  x = rng.normal(size=(5, 3)).astype(np.float32)
  y = np.array([0, 1, 1, 0, 1], np.int32)
  before = cache_sizes()
  evaluation.evaluate(apply_fn, variables, x, y)
  after = cache_sizes()
  assert after == {**before, "evaluation.eval_batch": before["evaluation.eval_batch"] + 1}
  evaluation.evaluate(apply_fn, variables, x, y)  # the same call compiles nothing
  assert cache_sizes() == after


def test_lowered_programs_records_each_new_lowering_once():
  import jax
  import jax.numpy as jnp

  from sap_jax.compile_cache import lowered_programs

  def double_plus_one(x):
    return 2 * x + 1

  f = jax.jit(double_plus_one)
  with lowered_programs() as lowered:
    f(np.ones(3, np.float32))
    f(np.zeros(3, np.float32))  # same shape: no new lowering
    f(np.ones(4, np.float32))  # new shape: lowered again
  assert [name for name, _ in lowered] == ["jit(double_plus_one)"] * 2
  assert all(seconds >= 0 for _, seconds in lowered)
  with lowered_programs() as after:
    pass
  f(jnp.ones(5))
  assert after == [] and len(lowered) == 2  # the listeners are gone after the block


def _stats_lowerings(variables):
  """(lowered program names, statistics) of a fresh Dense model over three batches, the
  last one short."""
  import flax.linen as nn

  from sap_jax.compile_cache import lowered_programs
  from sap_jax.stats import activation_stats

  model = nn.Dense(3)
  x = np.random.default_rng(0).normal(size=(21, 5)).astype(np.float32)

  def apply_fn(v, xx):  # a new function object: nothing compiled for it yet
    return model.apply(v, xx)

  with lowered_programs() as lowered:
    stats = activation_stats(apply_fn, variables, [x[:8], x[8:16], x[16:]])
  return [name for name, _ in lowered], stats, x


def test_activation_stats_lowers_one_step_for_every_batch():
  """The short last batch is padded on the host and the running sums start where the
  step's outputs live (committed, as a loaded checkpoint's variables are, or not), so
  three batches lower the statistics step once, and nothing else: the finiteness checks
  run in the step, and no eager op lowers a program of its own. The statistics are XᵀX
  of the 21 inputs (the padding adds nothing)."""
  import jax

  params = {
    "params": {
      "kernel": np.arange(15, dtype=np.float32).reshape(5, 3) / 10,
      "bias": np.zeros(3, np.float32),
    }
  }
  for variables in (params, jax.device_put(params, jax.devices()[0])):
    names, stats, x = _stats_lowerings(variables)
    assert names == ["jit(accumulate)"]
    ((_, s),) = stats.items()
    rows = x.astype(np.float64)
    np.testing.assert_allclose(np.asarray(s.gram), rows.T @ rows, rtol=1e-5, atol=1e-4)
    assert float(s.count) == 21
