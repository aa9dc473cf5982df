"""sap_jax.baselines.finetuning: Finetune on the lowest-loss samples, one compiled step."""

import jax
import numpy as np

from sap_jax import baselines as bl
from sap_jax import train
from sap_jax.trusted import per_example_loss
from tests.baseline_cases import Linear, linear_variables


def test_finetune_trains_on_exactly_the_lowest_loss_samples():
  model = Linear()
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 4)).astype(np.float32)
  variables = linear_variables()
  apply_fn = train.eval_apply_fn(model)
  w, b = variables["params"]["head"]["kernel"], variables["params"]["head"]["bias"]
  y = np.argmax(x @ w + b, -1).astype(np.int32)
  # Samples 20..39 are poison: huge inputs labelled with their least likely class.
  # Their losses are enormous; one step on any of them would move the weights by
  # far more than 1.
  x[20:] *= 1e3
  y[20:] = np.argmin(x[20:] @ w + b, -1)
  losses = per_example_loss(apply_fn, variables, x, y)
  assert losses[20:].min() > 100 * losses[:20].max()

  task = bl.CorrectionTask(
    model, variables, x, y, x[:5], y[:5], train.TrainConfig(epochs=1, batch_size=8)
  )
  result = bl.finetune(
    n_retain=20, epochs=3, batch_size=8, grid=None, lr=0.1, keep_original=False
  ).run(task)
  idx = result.details["retain_indices"]
  np.testing.assert_array_equal(idx, np.argsort(losses, kind="stable")[:20])
  assert set(idx.tolist()) == set(range(20))
  delta = jax.tree_util.tree_map(
    lambda a, b: float(np.abs(np.asarray(a) - b).max()),
    result.variables["params"],
    variables["params"],
  )
  assert 0 < max(jax.tree_util.tree_leaves(delta)) < 1.0
  assert result.chosen["n_retain"] == 20 and result.num_settings == 1


def test_finetune_grid_compiles_one_step():
  """A grid of learning rates (and of epochs) runs through one compilation of the step."""
  model = Linear(num_classes=6)  # shapes no other test uses
  rng = np.random.default_rng(3)
  x = rng.normal(size=(20, 9)).astype(np.float32)
  y = rng.integers(0, 6, 20).astype(np.int32)
  variables = model.init(jax.random.key(0), x[:1])
  before = bl.finetune_step._cache_size()
  outs = [
    bl.finetune_variables(model, variables, x, y, lr=lr, epochs=epochs, batch_size=8)
    for lr, epochs in ((1e-3, 1), (5e-2, 2))
  ]
  assert bl.finetune_step._cache_size() == before + 1
  # The settings did train with their own learning rates.
  moved = [
    float(np.abs(o["params"]["head"]["kernel"] - variables["params"]["head"]["kernel"]).max())
    for o in outs
  ]
  assert 0 < moved[0] < moved[1]
