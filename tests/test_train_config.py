"""sap_jax.train_config: TrainConfig's validation and its per-piece parts."""

import pytest

from sap_jax.optim import make_optimizer
from sap_jax.train_config import TrainConfig


def test_make_optimizer_is_shared_by_configs_with_one_optimizer_part():
  a = TrainConfig(seed=0, batch_size=32, mixup_alpha=0.2)
  b = TrainConfig(seed=5, batch_size=64, eval_every=3)
  assert a.part("optimizer") == b.part("optimizer")
  assert make_optimizer(a, 10) is make_optimizer(b, 10)
  c = TrainConfig(learning_rate=0.01)
  assert c.part("optimizer") != a.part("optimizer")
  assert make_optimizer(c, 10) is not make_optimizer(a, 10)
  # The step's part ignores the optimizer, the data order and the run length ...
  assert TrainConfig(epochs=3, learning_rate=0.2, seed=4).part("step") == TrainConfig().part("step")
  # ... but not the loss options; SAM belongs to both.
  assert TrainConfig(logit_clip=2.0).part("step") != TrainConfig().part("step")
  sam = TrainConfig(sam_rho=0.05)
  assert sam.part("step").sam_rho == sam.part("optimizer").sam_rho == 0.05
  with pytest.raises(ValueError, match="part"):
    a.part("loop")


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"schedule": "linear"}, "schedule"),
    ({"mentormix": True, "mixup_alpha": 0.2}, "mixup_alpha=0"),
    ({"momentum": 1.0}, "momentum"),
    ({"logit_clip": 0.0}, "logit_clip"),
  ],
)
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**kwargs)
