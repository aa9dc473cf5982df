"""`sap-jax demo`: the whole loop on a small synthetic problem, in one command (train on
noisy labels, correct with SAP, print both accuracies).
"""

from __future__ import annotations

import time

import numpy as np

from sap_jax import run_sap, train
from sap_jax.cli.errors import UserError
from sap_jax.cli.progress import Progress
from sap_jax.cli.train_command import check_majority_noise
from sap_jax.metrics import split_metrics
from sap_jax.spec import RunSpec, build_model, build_splits

__all__ = ["cmd_demo"]


def cmd_demo(args) -> int:
  start = time.perf_counter()
  spec = RunSpec(
    dataset="digits",
    noise=args.noise,
    model="cnn",
    seed=args.seed,
    train=train.TrainConfig(epochs=args.epochs, batch_size=64, learning_rate=0.05, seed=args.seed),
  )
  splits = build_splits(spec)
  check_majority_noise(spec.noise, splits.num_classes, args)
  if args.n_trusted > len(splits.x_train):  # before training, not after it
    raise UserError(
      f"--n-trusted {args.n_trusted} is more than the {len(splits.x_train)} training samples "
      f"of the demo; pass --n-trusted ≤ {len(splits.x_train)}."
    )
  model = build_model(spec, splits.num_classes)
  apply_fn = train.eval_apply_fn(model)
  print(
    f"sap-jax demo: a small CNN on sklearn digits ({len(splits.x_train)} train samples, "
    f"{int(splits.noise_mask.sum())} with corrupted labels: {spec.noise}), seed {spec.seed}\n"
  )
  print(
    f"1/3 training on the noisy labels for {spec.train.epochs} epochs "
    "(to memorisation, as the paper's 350 epochs do)"
  )
  progress = Progress(args.quiet).train_options(spec.train.epochs)
  vanilla = train.train_model(model, splits.x_train, splits.y_train, spec.train, **progress)
  print("2/3 SAP: trusted set → activation statistics → α chosen on the noisy validation split")
  sap = run_sap(
    apply_fn,
    vanilla.variables,
    splits.x_train,
    splits.y_train,
    splits.x_val,
    splits.y_val,
    n_trusted=args.n_trusted,
  )
  print("3/3 reference: retraining from scratch on the clean labels")
  clean = train.train_model(model, splits.x_train, splits.y_train_clean, spec.train, **progress)

  sap_name = f"SAP (α = {sap.alpha:g})" if sap.alpha else "SAP (kept original)"
  rows = [
    ("vanilla (noisy labels)", vanilla.variables, f"{vanilla.train_time_s:.1f}"),
    (sap_name, sap.variables, f"{sap.timings['total']:.1f}"),
    ("retrain (clean labels)", clean.variables, f"{clean.train_time_s:.1f}"),
  ]
  print(f"\n{'model':<26}{'clean test acc':>15}{'fits corrupted':>16}{'time (s)':>10}")
  for name, variables, seconds in rows:
    m = split_metrics(apply_fn, variables, splits)
    fit = f"{'-':>16}" if m["fit_noisy"] is None else f"{100 * m['fit_noisy']:>15.1f}%"
    print(f"{name:<26}{100 * m['test_accuracy']:>14.2f}%{fit}{seconds:>10}")
  trusted_noise = float(np.mean(splits.noise_mask[sap.trusted_indices]))
  print(
    f"\ntrusted set: {args.n_trusted} lowest-loss samples, {100 * trusted_noise:.1f}% of them "
    f"mislabelled; total {time.perf_counter() - start:.0f} s"
  )
  return 0
