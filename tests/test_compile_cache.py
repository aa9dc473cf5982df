"""sap_jax.compile_cache: the core's compiled programs and their compilation counts."""

import numpy as np

from sap_jax import evaluation, stats, sweep, trusted
from sap_jax.compile_cache import cache_sizes, compiled_functions


def test_compiled_functions_gather_every_jitted_table():
  fns = compiled_functions()
  want = {**trusted.JITTED, **stats.JITTED, **evaluation.JITTED, **sweep.JITTED}
  assert list(fns) == list(want)
  assert all(fns[name] is fn for name, fn in want.items())
  assert {"evaluation.eval_batch", "evaluation.predict_batch"} <= set(fns)


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
