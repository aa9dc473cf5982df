"""Table 2 analogue on CPU: SAP on top of noise-robust training.

Command (measured 6.5 min on 2 CPU cores as two `--shard` runners, after table1; the ERM rows
reuse table1's checkpoints):

    python -m experiments.run experiments/configs/table2.py

Reproduces the paper's Table 2 (CIFAR-10, 25 % symmetric noise: MixUp 83.12 →
86.45, SAM 83.29 → 87.29, logit clipping 82.91 → 85.99, …) at CPU scale: the
Table 1 digits and MNIST-1D models trained with MixUp (α 0.2), SAM (ρ 0.05),
logit clipping (τ 5, the L2 bound of each logit vector) or generalised label
smoothing (r 0.2), each then corrected by SAP with α chosen on the noisy
validation split. Rows: training method; columns: setting × (Vanilla, SAP).
Results: experiments/results/table2/.
"""

import dataclasses

from experiments.config import MethodSpec, TableSpec, Variant
from experiments.configs import table1

VARIANTS = (
  Variant("ERM"),
  Variant("MixUp (α=0.2)", {"mixup_alpha": 0.2}),
  Variant("SAM (ρ=0.05)", {"sam_rho": 0.05}),
  Variant("Logit clipping (τ=5)", {"logit_clip": 5.0}),
  Variant("Label smoothing (r=0.2)", {"label_smoothing": 0.2}),
)


def get_config():
  base = table1.get_config()
  return dataclasses.replace(
    base,
    name="table2",
    description="Table 2 analogue: SAP on top of noise-robust training (25 % symmetric noise)",
    noises=("symmetric:0.25",),
    variants=VARIANTS,
    methods=(MethodSpec("vanilla"), MethodSpec("sap", {"n_trusted": 1000})),
    table=TableSpec(
      rows=("variant",),
      columns=("setup", "method"),
      reference_rows=(),
      oracle_rows=False,
      average=False,
      delta=("Vanilla", "SAP"),
    ),
    plots=(),
    record_spectra=False,
  )
