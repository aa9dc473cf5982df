"""`sap-jax` command line: train | evaluate | correct | demo.

The edge of the library: argument parsing, files and printing live here; every
step calls the pure functions of the package.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DEFAULT_ALPHAS_TEXT = "1e2,3e2,1e3,3e3,1e4,3e4,1e5,3e5,1e6"


def _floats(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not values:
    raise argparse.ArgumentTypeError("expected at least one number")
  return values


def _kv(text: str) -> tuple[str, Any]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
  key, value = text.split("=", 1)
  try:
    parsed = json.loads(value)
  except json.JSONDecodeError:
    parsed = value
  return key.replace("-", "_"), parsed


def _refuse_existing(path: Path, overwrite: bool, what: str) -> None:
  if path.exists() and not overwrite:
    raise SystemExit(
        f"error: {what} {path} already exists; pass --overwrite to replace it or "
        "choose another --out."
    )


# --------------------------------------------------------------------- train


def _add_run_args(p: argparse.ArgumentParser) -> None:
  from sap_jax import data, models

  g = p.add_argument_group("data and model")
  g.add_argument("--dataset", default="digits", help=f"one of {', '.join(data.known_datasets())}")
  g.add_argument("--data-root", default=None, help="folder/file for on-disk datasets (CIFAR archives, npz, image folder)")
  g.add_argument("--data-opt", type=_kv, action="append", default=[], metavar="KEY=VALUE", help="extra dataset option")
  g.add_argument("--noise", default="symmetric:0.25", help="none | symmetric:RATE | asymmetric:RATE | hierarchical:RATE | human:VARIANT")
  g.add_argument("--val-fraction", type=float, default=0.1, help="noisy validation share of the training set")
  g.add_argument("--model", default="cnn", help=f"one of {', '.join(models.known_models())}")
  g.add_argument("--model-kw", type=_kv, action="append", default=[], metavar="KEY=VALUE", help="model option, e.g. width=64")
  g.add_argument("--seed", type=int, default=0)
  t = p.add_argument_group("training (SGD, momentum 0.9)")
  t.add_argument("--epochs", type=int, default=150)
  t.add_argument("--batch-size", type=int, default=64)
  t.add_argument("--lr", type=float, default=0.05)
  t.add_argument("--weight-decay", type=float, default=5e-4)
  t.add_argument("--schedule", default="constant", choices=("constant", "step", "cosine"))
  t.add_argument("--mixup", type=float, default=0.0, help="MixUp α (0: off)")
  t.add_argument("--sam", type=float, default=0.0, help="SAM ρ (0: off)")
  t.add_argument("--logit-clip", type=float, default=None, help="LogitClip τ")
  t.add_argument("--label-smoothing", type=float, default=0.0, help="generalised label smoothing rate, may be negative")
  t.add_argument("--mentormix", action="store_true")
  t.add_argument("--early-stopping", type=int, default=None, metavar="PATIENCE")


def _spec_from_args(args):
  from sap_jax.spec import RunSpec
  from sap_jax.train import TrainConfig

  config = TrainConfig(
      epochs=args.epochs,
      batch_size=args.batch_size,
      learning_rate=args.lr,
      weight_decay=args.weight_decay,
      schedule=args.schedule,
      seed=args.seed,
      mixup_alpha=args.mixup,
      sam_rho=args.sam,
      logit_clip=args.logit_clip,
      label_smoothing=args.label_smoothing,
      mentormix=args.mentormix,
      early_stopping_patience=args.early_stopping,
  )
  return RunSpec(
      dataset=args.dataset,
      noise=args.noise,
      model=args.model,
      seed=args.seed,
      val_fraction=args.val_fraction,
      data_root=args.data_root,
      data_options=dict(args.data_opt),
      model_kwargs=dict(args.model_kw),
      train=config,
  )


def _noisy_metrics(apply_fn, variables, splits) -> dict[str, float]:
  from sap_jax import train

  return {
      "test_accuracy": train.evaluate(apply_fn, variables, splits.x_test, splits.y_test)["accuracy"],
      "val_accuracy_noisy": train.evaluate(apply_fn, variables, splits.x_val, splits.y_val)["accuracy"],
      "val_accuracy_clean": train.evaluate(apply_fn, variables, splits.x_val, splits.y_val_clean)["accuracy"],
      "noisy_fit": (
          train.fit_fraction(apply_fn, variables, splits.x_train, splits.y_train, splits.noise_mask)
          if splits.noise_mask.any()
          else float("nan")
      ),
  }


def cmd_train(args) -> int:
  from sap_jax import checkpoint, train
  from sap_jax.spec import build_model, build_splits

  out = Path(args.out)
  _refuse_existing(out, args.overwrite, "checkpoint")
  spec = _spec_from_args(args)
  splits = build_splits(spec)
  model = build_model(spec, splits.num_classes)
  print(
      f"training {spec.model} on {spec.dataset} with {spec.noise} noise: "
      f"{len(splits.x_train)} train ({int(splits.noise_mask.sum())} corrupted), "
      f"{len(splits.x_val)} noisy val, {len(splits.x_test)} clean test"
  )
  result = train.train_model(
      model, splits.x_train, splits.y_train, spec.train, x_val=splits.x_val, y_val=splits.y_val, progress=not args.quiet
  )
  apply_fn = train.eval_apply_fn(model)
  metrics = _noisy_metrics(apply_fn, result.variables, splits)
  metrics["train_time_s"] = result.train_time_s
  path = checkpoint.save_checkpoint(
      out,
      result.variables,
      {"kind": "trained", "spec": spec.to_dict(), "metrics": metrics, "history": result.history},
      overwrite=args.overwrite,
  )
  _print_metrics("vanilla", metrics)
  print(f"saved {path}")
  return 0


def _print_metrics(name: str, m: dict[str, float]) -> None:
  fit = "" if m.get("noisy_fit") != m.get("noisy_fit") else f", fits {100 * m['noisy_fit']:.1f}% of the corrupted labels"
  print(f"{name}: clean test accuracy {100 * m['test_accuracy']:.2f}%{fit}")


# ------------------------------------------------------------------ evaluate


def _load_run(path: str):
  from sap_jax import checkpoint, train
  from sap_jax.spec import RunSpec, build_model, build_splits

  variables, meta = checkpoint.load_checkpoint(path)
  if "spec" not in meta:
    raise SystemExit(
        f"error: {path} has no run spec in its metadata; it was not written by "
        "`sap-jax train` or `sap-jax correct`."
    )
  spec = RunSpec.from_dict(meta["spec"])
  splits = build_splits(spec)
  model = build_model(spec, splits.num_classes)
  return variables, meta, spec, splits, train.eval_apply_fn(model)


def cmd_evaluate(args) -> int:
  variables, meta, spec, splits, apply_fn = _load_run(args.checkpoint)
  metrics = _noisy_metrics(apply_fn, variables, splits)
  print(json.dumps({"checkpoint": str(args.checkpoint), "kind": meta.get("kind"), **metrics}, indent=2))
  return 0


# ------------------------------------------------------------------- correct


def cmd_correct(args) -> int:
  import numpy as np

  from sap_jax import checkpoint, pipeline

  out = Path(args.out)
  report_path = Path(args.report) if args.report else out.with_name(out.name + "_report.json")
  if out.resolve() == Path(args.checkpoint).resolve():
    raise SystemExit("error: --out must differ from the input checkpoint; SAP never overwrites it.")
  _refuse_existing(out, args.overwrite, "checkpoint")
  _refuse_existing(report_path, args.overwrite, "report")
  variables, meta, spec, splits, apply_fn = _load_run(args.checkpoint)
  n_trusted = min(args.n_trusted, len(splits.x_train))
  result = pipeline.run_sap(
      apply_fn,
      variables,
      splits.x_train,
      splits.y_train,
      splits.x_val,
      splits.y_val,
      n_trusted=n_trusted,
      alphas=args.alphas,
      score=args.score,
      class_balanced=args.class_balanced,
      exclude=tuple(args.exclude),
      batch_size=args.batch_size,
  )
  before = _noisy_metrics(apply_fn, variables, splits)
  after = _noisy_metrics(apply_fn, result.variables, splits)
  from sap_jax.correct import sweep_alpha
  from sap_jax.stats import activation_stats, batched
  from sap_jax.correct import select_layers

  stats = select_layers(
      activation_stats(apply_fn, variables, batched(splits.x_train[result.trusted_indices], args.batch_size)),
      exclude=tuple(args.exclude),
  )
  oracle = sweep_alpha(apply_fn, variables, stats, args.alphas, splits.x_val, splits.y_val_clean)
  report = {
      "input": str(Path(args.checkpoint).resolve()),
      "output": str(out.resolve()),
      "n_trusted": n_trusted,
      "score": args.score,
      "class_balanced": args.class_balanced,
      "exclude": list(args.exclude),
      "trusted_noise_rate": float(np.mean(splits.noise_mask[result.trusted_indices])),
      "chosen_alpha": result.alpha,
      "sweep_noisy_val": {
          "baseline": result.sweep.baseline_accuracy,
          "per_alpha": dict(zip(map(float, result.sweep.alphas), map(float, result.sweep.accuracies))),
      },
      "oracle_alpha_clean_val": oracle.best_alpha,
      "sweep_clean_val": {
          "baseline": oracle.baseline_accuracy,
          "per_alpha": dict(zip(map(float, oracle.alphas), map(float, oracle.accuracies))),
      },
      "before": before,
      "after": after,
      "layers": result.layers,
      "timings_s": result.timings,
  }
  checkpoint.save_checkpoint(
      out,
      result.variables,
      {"kind": "sap", "spec": spec.to_dict(), "source": str(Path(args.checkpoint).resolve()), "sap": report},
      overwrite=args.overwrite,
  )
  report_path.parent.mkdir(parents=True, exist_ok=True)
  report_path.write_text(json.dumps(report, indent=2))
  _print_metrics("before SAP", before)
  alpha = "none beat the original model (kept)" if result.alpha is None else f"{result.alpha:g}"
  print(f"α chosen on the noisy validation split: {alpha}")
  _print_metrics("after SAP ", after)
  print(f"saved {out} and {report_path}")
  return 0


# ---------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
  import numpy as np

  from sap_jax import pipeline, train
  from sap_jax.spec import RunSpec, build_model, build_splits

  start = time.perf_counter()
  spec = RunSpec(
      dataset="digits",
      noise=args.noise,
      model="cnn",
      seed=args.seed,
      train=train.TrainConfig(epochs=args.epochs, batch_size=64, learning_rate=0.05, seed=args.seed),
  )
  splits = build_splits(spec)
  model = build_model(spec, splits.num_classes)
  apply_fn = train.eval_apply_fn(model)
  print(
      f"sap-jax demo: a small CNN on sklearn digits ({len(splits.x_train)} train samples, "
      f"{int(splits.noise_mask.sum())} with corrupted labels: {spec.noise}), seed {spec.seed}\n"
  )
  print(f"1/3 training on the noisy labels for {spec.train.epochs} epochs (to memorisation, as the paper's 350 epochs do)")
  vanilla = train.train_model(model, splits.x_train, splits.y_train, spec.train, progress=not args.quiet)
  print("2/3 SAP: trusted set → activation statistics → α chosen on the noisy validation split")
  sap = pipeline.run_sap(
      apply_fn,
      vanilla.variables,
      splits.x_train,
      splits.y_train,
      splits.x_val,
      splits.y_val,
      n_trusted=args.n_trusted,
  )
  print("3/3 reference: retraining from scratch on the clean labels")
  clean = train.train_model(model, splits.x_train, splits.y_train_clean, spec.train, progress=not args.quiet)

  rows = [
      ("vanilla (noisy labels)", vanilla.variables, f"{vanilla.train_time_s:.1f}"),
      (f"SAP (α = {sap.alpha:g})" if sap.alpha else "SAP (kept original)", sap.variables, f"{sap.timings['total']:.1f}"),
      ("retrain (clean labels)", clean.variables, f"{clean.train_time_s:.1f}"),
  ]
  print(f"\n{'model':<26}{'clean test acc':>15}{'fits corrupted':>16}{'time (s)':>10}")
  for name, variables, seconds in rows:
    m = _noisy_metrics(apply_fn, variables, splits)
    print(f"{name:<26}{100 * m['test_accuracy']:>14.2f}%{100 * m['noisy_fit']:>15.1f}%{seconds:>10}")
  trusted_noise = float(np.mean(splits.noise_mask[sap.trusted_indices]))
  print(
      f"\ntrusted set: {args.n_trusted} lowest-loss samples, {100 * trusted_noise:.1f}% of them mislabelled; "
      f"total {time.perf_counter() - start:.0f} s"
  )
  return 0


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="sap-jax",
      description="SAP (Scaled Activation Projection): one-shot correction of models trained on noisy labels.",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("train", help="train a model on noisy labels and save a checkpoint")
  _add_run_args(p)
  p.add_argument("--out", required=True, help="checkpoint directory to create")
  p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("evaluate", help="clean test / noisy val accuracy and memorisation of a checkpoint")
  p.add_argument("checkpoint")
  p.set_defaults(func=cmd_evaluate)

  p = sub.add_parser("correct", help="correct a trained checkpoint with SAP")
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train`")
  p.add_argument("--out", required=True, help="new checkpoint directory (never the input)")
  p.add_argument("--report", default=None, help="JSON report path (default: <out>_report.json)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out / --report")
  p.add_argument("--alphas", type=_floats, default=_floats(DEFAULT_ALPHAS_TEXT), help=f"α grid (default {DEFAULT_ALPHAS_TEXT})")
  p.add_argument("--n-trusted", type=int, default=1000, help="trusted-set size (paper: 1000; capped at the training size)")
  p.add_argument("--score", default="loss", choices=("loss", "curvature"), help="how to rank trusted samples")
  p.add_argument("--class-balanced", action="store_true", help="pick n-trusted/K samples per class")
  p.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="layer path glob to leave unchanged (e.g. head)")
  p.add_argument("--batch-size", type=int, default=256)
  p.set_defaults(func=cmd_correct)

  p = sub.add_parser("demo", help="the whole story on digits: noisy training → SAP → clean retrain")
  p.add_argument("--noise", default="symmetric:0.25")
  p.add_argument("--epochs", type=int, default=100)
  p.add_argument("--n-trusted", type=int, default=500)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--quiet", action="store_true")
  p.set_defaults(func=cmd_demo)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
