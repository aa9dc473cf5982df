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
