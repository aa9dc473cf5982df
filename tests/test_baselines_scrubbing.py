"""sap_jax.baselines.scrubbing: SCRUB's divergence, its max/min steps and their compilation."""

import jax
import numpy as np
import pytest

from sap_jax import baselines as bl
from sap_jax import train
from tests.baseline_cases import Linear, linear_variables


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_scrub_kl_and_one_max_and_min_step():
  model = Linear()
  rng = np.random.default_rng(0)
  x_f = rng.normal(size=(16, 4)).astype(np.float32)
  x_r = rng.normal(size=(16, 4)).astype(np.float32)
  y_r = rng.integers(0, 3, 16).astype(np.int32)
  teacher = linear_variables()["params"]
  logits = lambda p, x: x @ np.asarray(p["head"]["kernel"]) + np.asarray(p["head"]["bias"])  # noqa: E731
  t_f, t_r = logits(teacher, x_f), logits(teacher, x_r)
  temp = 4.0

  @jax.jit
  def kl_of(p, x, t):  # the divergence of the student p from the teacher logits t
    return bl.scrub_kl(model.apply({"params": p}, x), t, temp)

  @jax.jit
  def objective(p):
    return bl.scrub_min_objective(
      model.apply({"params": p}, x_r), t_r, y_r, alpha=0.5, gamma=0.99, temperature=temp
    )

  # The divergence is T² · mean KL(softmax(t/T) ‖ softmax(s/T)).
  s_logits = rng.normal(size=(16, 3)).astype(np.float32)
  pt, ps = _np_softmax(t_f / temp), _np_softmax(s_logits / temp)
  want = temp**2 * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), -1))
  np.testing.assert_allclose(bl.scrub_kl(s_logits, t_f, temp), want, rtol=1e-5)

  # Student = teacher: KL is 0 and so is its gradient.
  assert float(kl_of(teacher, x_f, t_f)) == pytest.approx(0.0, abs=1e-7)
  g = jax.jit(jax.grad(kl_of))(teacher, x_f, t_f)
  assert max(float(np.abs(leaf).max()) for leaf in jax.tree_util.tree_leaves(g)) < 1e-6

  # A student slightly off the teacher: a max-step raises the forget KL …
  student = jax.tree_util.tree_map(
    lambda p: p + 0.1 * rng.normal(size=p.shape).astype(np.float32), teacher
  )
  state = train.state_from_variables(
    model, {"params": student}, learning_rate=0.5, momentum=0.0, weight_decay=0.0
  )
  new, kl_before = bl.scrub_max_step(state, x_f, t_f, jax.random.key(0), np.float32(temp))
  assert float(kl_before) == pytest.approx(float(kl_of(student, x_f, t_f)), rel=1e-5)
  assert float(kl_of(new.params, x_f, t_f)) > float(kl_before) > 0

  # … and a min-step lowers γ·CE + α·KL on the retain batch.
  new, obj_before = bl.scrub_min_step(
    state, x_r, y_r, t_r, jax.random.key(0), np.float32(temp), np.float32(0.5), np.float32(0.99)
  )
  assert float(obj_before) == pytest.approx(float(objective(student)), rel=1e-5)
  assert float(objective(new.params)) < float(obj_before)


def test_scrub_grid_compiles_each_step_once():
  """lr, momentum, weight decay live in the optimizer state: a grid reuses the steps."""
  model = Linear(num_classes=5)  # shapes no other test uses
  rng = np.random.default_rng(2)
  x = rng.normal(size=(24, 7)).astype(np.float32)
  y = rng.integers(0, 5, 24).astype(np.int32)
  variables = model.init(jax.random.key(0), x[:1])
  steps = (bl.scrub_max_step, bl.scrub_min_step)
  sizes = []
  for lr, momentum in ((5e-4, 0.9), (5e-3, 0.5), (1e-2, 0.0)):
    bl.scrub_variables(
      model,
      variables,
      x[:8],
      x[8:],
      y[8:],
      lr=lr,
      momentum=momentum,
      epochs=2,
      msteps=1,
      batch_size=8,
      forget_batch_size=4,
    )
    sizes.append([step._cache_size() for step in steps])
  assert sizes[0] == sizes[1] == sizes[2]
