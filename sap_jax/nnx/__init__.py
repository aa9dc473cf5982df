"""SAP on Flax NNX models (``import sap_jax.nnx``).

The Linen API's functions, taking an ``nnx.Module`` instead of ``(apply_fn,
variables)``; layers are addressed by their NNX graph path (a tuple of attribute names
and ``nnx.List`` / ``nnx.Sequential`` indices, e.g. ``("layers", 0)``):

    result = sap_jax.nnx.run_sap(model, x_train, y_noisy, x_val, y_val_noisy, n_trusted=1000)
    result.model, result.alpha, result.sweep          # a corrected copy; `model` untouched

    stats = sap_jax.nnx.activation_stats(model, sap_jax.batched(x_trusted, 256))
    corrected = sap_jax.nnx.project(model, sap_jax.projections(stats, 3e4))

Training, checkpoints (`sap_jax.nnx.train`, `sap_jax.nnx.checkpoint`): the Linen code on
a split model, so the numbers are the same code's:

    trained = sap_jax.nnx.train_model(model, x, y, sap_jax.TrainConfig(epochs=30)).model
    sap_jax.nnx.save_checkpoint("ckpt", trained, {"note": "noisy labels"})
    model, metadata = sap_jax.nnx.load_checkpoint("ckpt", model)   # a copy, saved arrays

Covered layers: ``nnx.Linear``, ``nnx.LinearGeneral`` (so ``nnx.MultiHeadAttention``'s
projections), ``nnx.Conv``. Every function runs an eval-mode copy of the model
(``.eval()`` on the library's own object); the core (statistics, decomposition, α
sweep) is the Linen code, through `functional` (model → ``(apply_fn, variables)``) and
`to_model` (variables → a copy of the model).
"""

from sap_jax.nnx.api import (
  NNXSAPResult,
  activation_stats,
  apply_alpha,
  correct,
  decompose,
  evaluate,
  per_example_loss,
  project,
  run_sap,
  sweep_alpha,
  trust_scores,
)
from sap_jax.nnx.checkpoint import load_checkpoint, save_checkpoint
from sap_jax.nnx.functional import (
  NNXApply,
  functional,
  load_linen_variables,
  to_model,
  variables_of,
  with_variables,
)
from sap_jax.nnx.layers import COVERED, UnsupportedLayerError, linen_twin
from sap_jax.nnx.train import (
  LinenView,
  NNXTrainResult,
  linen_view,
  optimizer,
  train_model,
  train_model_in_place,
)

__all__ = [
  "COVERED",
  "LinenView",
  "NNXApply",
  "NNXSAPResult",
  "NNXTrainResult",
  "UnsupportedLayerError",
  "activation_stats",
  "apply_alpha",
  "correct",
  "decompose",
  "evaluate",
  "functional",
  "linen_twin",
  "linen_view",
  "load_checkpoint",
  "load_linen_variables",
  "optimizer",
  "per_example_loss",
  "project",
  "run_sap",
  "save_checkpoint",
  "sweep_alpha",
  "to_model",
  "train_model",
  "train_model_in_place",
  "trust_scores",
  "variables_of",
  "with_variables",
]
