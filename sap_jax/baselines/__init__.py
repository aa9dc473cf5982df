"""SAP and the baselines it is compared with, behind one interface.

Every method is a :class:`Method` (``name``, ``run(task) -> CorrectionResult``,
``hparams``) built by a factory with keyword defaults::

    from sap_jax import baselines
    task = baselines.CorrectionTask.from_splits(model, variables, splits, config)
    for name in baselines.known_methods():
      result = baselines.get_method(name).run(task)

One module per method, named for what it does so that no module shadows its factory:
``finetuning`` (``finetune``), ``dampening`` (``ssd``), ``scrubbing`` (``scrub``),
``retraining`` (``retrain``), ``cleaning`` (``confident_learning``), ``sap``
(``sap_method``); their grids are re-exported as ``FINETUNE_GRID``, ``SSD_GRID``,
``SCRUB_GRID`` and ``SCRUB_PAPER_SCALE_GRID``.

========== ============================================== ====================
name       what                                           default settings
========== ============================================== ====================
vanilla    the trained model unchanged                    0
sap        SAP, α on noisy val (:mod:`.sap`)              9 (``DEFAULT_ALPHAS``)
retrain    train on the clean labels (reference)          1
finetune   train on the n lowest-loss samples             3 learning rates
ssd        Selective Synaptic Dampening                   10 (α × λ)
scrub      SCRUB teacher/student max-min                  8 (675: paper scale)
cleaning   confident learning (cleanlab) + retrain        1
========== ============================================== ====================
"""

from collections.abc import Callable

from sap_jax.baselines.base import (
  BUDGET_RULE,
  Method,
  Outcome,
  clip_budget,
  expand_grid,
  make_method,
  vanilla,
)
from sap_jax.baselines.cleaning import confident_learning, cross_val_probs, find_label_issues
from sap_jax.baselines.dampening import DEFAULT_GRID as SSD_GRID
from sap_jax.baselines.dampening import fisher_diagonal, ssd, ssd_dampen, ssd_dampen_params
from sap_jax.baselines.finetuning import DEFAULT_GRID as FINETUNE_GRID
from sap_jax.baselines.finetuning import finetune, finetune_step, finetune_variables
from sap_jax.baselines.retraining import retrain
from sap_jax.baselines.sap import sap_method
from sap_jax.baselines.scrubbing import DEFAULT_GRID as SCRUB_GRID
from sap_jax.baselines.scrubbing import PAPER_SCALE_GRID as SCRUB_PAPER_SCALE_GRID
from sap_jax.baselines.scrubbing import (
  scrub,
  scrub_kl,
  scrub_max_step,
  scrub_min_objective,
  scrub_min_step,
  scrub_variables,
)
from sap_jax.baselines.task import CorrectionResult, CorrectionTask

_FACTORIES: dict[str, Callable[..., Method]] = {
  "vanilla": vanilla,
  "sap": sap_method,
  "retrain": retrain,
  "finetune": finetune,
  "ssd": ssd,
  "scrub": scrub,
  "cleaning": confident_learning,
}


def known_methods() -> tuple[str, ...]:
  """The method names, in the paper's table order (vanilla first)."""
  return tuple(_FACTORIES)


def get_method(name: str, **kwargs) -> Method:
  """Builds the method ``name`` with the factory's keyword arguments.

  Args:
    name: one of :func:`known_methods`.
    **kwargs: arguments of that factory (e.g. ``n_forget=1000`` for "ssd").

  Returns:
    The :class:`Method`.

  Raises:
    ValueError: unknown name (the message lists the known ones).
  """
  if name not in _FACTORIES:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(known_methods())}.")
  return _FACTORIES[name](**kwargs)


__all__ = [
  "BUDGET_RULE",
  "FINETUNE_GRID",
  "SCRUB_GRID",
  "SCRUB_PAPER_SCALE_GRID",
  "SSD_GRID",
  "CorrectionResult",
  "CorrectionTask",
  "Method",
  "Outcome",
  "clip_budget",
  "confident_learning",
  "cross_val_probs",
  "expand_grid",
  "find_label_issues",
  "finetune",
  "finetune_step",
  "finetune_variables",
  "fisher_diagonal",
  "get_method",
  "known_methods",
  "make_method",
  "retrain",
  "sap_method",
  "scrub",
  "scrub_kl",
  "scrub_max_step",
  "scrub_min_objective",
  "scrub_min_step",
  "scrub_variables",
  "ssd",
  "ssd_dampen",
  "ssd_dampen_params",
  "vanilla",
]
