"""SAP ablations on CPU: N_trust, trusted-set selection, projecting the classifier, α curve.

Command (measured 2 min on 2 CPU cores as two `--shard` runners, after table1; reuses table1's
vanilla checkpoints):

    python -m experiments.run experiments/configs/ablations.py

Reproduces the paper's ablations on the Table 1 models (same data, training
and seeds, so the vanilla checkpoints of experiments/configs/table1.py are
reused) at 25 % symmetric noise:

* N_trust ∈ {100, 250, 500, 1000} (the paper: gains flatten beyond 1000). On
  digits (1170 training samples) 1000 is clipped to N/2 = 585.
* trusted selection: lowest loss (paper, default) vs input curvature (squared norm,
  per-sample loss) vs the published code's curvature estimator exactly
  (``curvature_published``: norm, batch-mean loss, n // K + 1 per class, on the noisy
  labels) vs class-balanced (per class), and curvature + class-balanced.
* projecting every layer (paper) vs leaving the classifier ``head`` alone.
* rounds ∈ {1, 2, 3} (the published code's ``--num-rounds``,
  `sap_jax.correction.sap_rounds`): round r's rows are each layer's input in the round
  r−1 model times the composed projection, α grid × 10 per round, every round scored
  on the noisy validation split, stopping when no α improves. 1 round is the first row.
* the α curve (alpha_curve.png: clean test / noisy val / clean val accuracy
  against α) and the N_trust curve (ntrust.png).

Results: experiments/results/ablations/.
"""

import dataclasses

from experiments.config import MethodSpec, TableSpec
from experiments.configs import table1

N_TRUST = (100, 250, 500, 1000)
ROUNDS = (2, 3)


def get_config():
  base = table1.get_config()
  sap = [MethodSpec("sap", {"n_trusted": 1000}, "SAP (loss, N_trust=1000; digits 585)")]
  sap += [MethodSpec("sap", {"n_trusted": n}, f"SAP N_trust={n}") for n in N_TRUST[:-1]]
  sap += [
    MethodSpec("sap", {"n_trusted": 1000, "score": "curvature"}, "SAP curvature"),
    MethodSpec(
      "sap",
      {"n_trusted": 1000, "score": "curvature_published"},
      "SAP curvature (published estimator, n // K + 1 per class)",
    ),
    MethodSpec("sap", {"n_trusted": 1000, "class_balanced": True}, "SAP class-balanced"),
    MethodSpec(
      "sap",
      {"n_trusted": 1000, "score": "curvature", "class_balanced": True},
      "SAP curvature + class-balanced",
    ),
    MethodSpec("sap", {"n_trusted": 1000, "exclude": ["head"]}, "SAP, classifier not projected"),
  ]
  # Rounds (the published --num-rounds; 1 round is the first row).
  sap += [MethodSpec("sap", {"n_trusted": 1000, "rounds": r}, f"SAP, {r} rounds") for r in ROUNDS]
  return dataclasses.replace(
    base,
    name="ablations",
    description="SAP ablations: N_trust, trusted-set selection, classifier projection, "
    "rounds (25 % symmetric noise)",
    noises=("symmetric:0.25",),
    methods=(MethodSpec("vanilla"), *sap),
    table=TableSpec(
      rows=("method",), columns=("setup", "noise"), reference_rows=(), oracle_rows=False
    ),
    plots=("alpha_curve", "ntrust"),
    record_spectra=False,
  )
