"""`sap-jax` command line: train | evaluate | correct | demo.

The edge of the library: argument parsing, files and printing live here; every
step calls the public functions of the package, and every default and choice
comes from it (`TrainConfig`'s fields, `RunSpec`'s, `run_sap`'s keyword defaults,
`DEFAULT_ALPHAS`, `trusted.SCORES`). `main` turns on JAX's persistent compilation cache
(`sap_jax.compilation`; global option ``--compilation-cache DIR|off``), so a later command
in a new process loads the compiled programs of an earlier one instead of compiling them.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sap_jax import (
  DEFAULT_ALPHAS,
  checkpoint,
  compilation,
  data,
  jsonio,
  models,
  run_sap,
  train,
  trusted,
)
from sap_jax.metrics import split_metrics
from sap_jax.spec import RunSpec, build_model, build_splits


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
  """Shows every option's default, except None (the option's help says what None means)."""

  def _get_help_string(self, action):
    if action.default is None or action.required:
      return action.help
    return super()._get_help_string(action)


def _field_defaults(cls: type) -> dict[str, Any]:
  """A dataclass's field defaults (fields with a default factory are left out)."""
  return {
    f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING
  }


def _keyword_defaults(fn) -> dict[str, Any]:
  """A function's keyword argument defaults."""
  return {
    name: p.default
    for name, p in inspect.signature(fn).parameters.items()
    if p.default is not inspect.Parameter.empty
  }


def _floats_text(values: Sequence[float]) -> str:
  """Comma-separated numbers (``1e2,3e2,…``) that `_floats` reads back exactly."""

  def text(v: float) -> str:
    mantissa, exponent = f"{v:e}".split("e")
    short = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    return short if float(short) == v else repr(float(v))

  return ",".join(text(v) for v in values)


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


def _print_metrics(name: str, m: dict[str, float | None]) -> None:
  fit = m.get("fit_noisy")
  fit = "" if fit is None else f", fits {100 * fit:.1f}% of the corrupted labels"
  print(f"{name}: clean test accuracy {100 * m['test_accuracy']:.2f}%{fit}")


# --------------------------------------------------------------------- train


def _add_run_args(p: argparse.ArgumentParser) -> None:
  run = _field_defaults(RunSpec)
  cfg = _field_defaults(train.TrainConfig)
  g = p.add_argument_group("data and model")
  g.add_argument(
    "--dataset", default=run["dataset"], help=f"one of {', '.join(data.known_datasets())}"
  )
  g.add_argument(
    "--data-root",
    default=run["data_root"],
    help="folder/file for on-disk datasets (CIFAR archives, npz, image folder)",
  )
  g.add_argument(
    "--data-opt",
    type=_kv,
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="extra dataset option (repeatable)",
  )
  g.add_argument(
    "--noise",
    default=run["noise"],
    help="none | symmetric:RATE | asymmetric:RATE | hierarchical:RATE | human:VARIANT",
  )
  g.add_argument(
    "--val-fraction",
    type=float,
    default=run["val_fraction"],
    help="noisy validation share of the training set",
  )
  g.add_argument("--model", default=run["model"], help=f"one of {', '.join(models.known_models())}")
  g.add_argument(
    "--model-kw",
    type=_kv,
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="model option, e.g. width=64 (repeatable)",
  )
  g.add_argument("--seed", type=int, default=run["seed"], help="seeds noise, split and training")
  t = p.add_argument_group("training (SGD with momentum; defaults: sap_jax.train.TrainConfig)")
  t.add_argument("--epochs", type=int, default=cfg["epochs"], help="passes over the training set")
  t.add_argument("--batch-size", type=int, default=cfg["batch_size"], help="samples per step")
  t.add_argument("--lr", type=float, default=cfg["learning_rate"], help="base learning rate")
  t.add_argument("--weight-decay", type=float, default=cfg["weight_decay"], help="L2 coefficient")
  # TODO: choices= the schedule names once sap_jax.train exposes them publicly; meanwhile
  # TrainConfig rejects an unknown name with the list of known ones.
  t.add_argument(
    "--schedule",
    default=cfg["schedule"],
    help="learning-rate schedule (see sap_jax.train.make_schedule)",
  )
  t.add_argument("--mixup", type=float, default=cfg["mixup_alpha"], help="MixUp α (0: off)")
  t.add_argument("--sam", type=float, default=cfg["sam_rho"], help="SAM ρ (0: off)")
  t.add_argument(
    "--logit-clip", type=float, default=cfg["logit_clip"], help="LogitClip τ (default: off)"
  )
  t.add_argument(
    "--label-smoothing",
    type=float,
    default=cfg["label_smoothing"],
    help="generalised label smoothing rate, may be negative (0: off)",
  )
  t.add_argument(
    "--mentormix", action="store_true", default=cfg["mentormix"], help="train with MentorMix"
  )
  t.add_argument(
    "--early-stopping",
    type=int,
    default=cfg["early_stopping_patience"],
    metavar="PATIENCE",
    help="stop after PATIENCE epochs without a better noisy validation accuracy (default: off)",
  )


def _spec_from_args(args) -> RunSpec:
  config = train.TrainConfig(
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


def cmd_train(args) -> int:
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
    model,
    splits.x_train,
    splits.y_train,
    spec.train,
    x_val=splits.x_val,
    y_val=splits.y_val,
    progress=not args.quiet,
  )
  apply_fn = train.eval_apply_fn(model)
  metrics = split_metrics(apply_fn, result.variables, splits)
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


# ------------------------------------------------------------------ evaluate


def _load_run(path: str):
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
  variables, meta, _, splits, apply_fn = _load_run(args.checkpoint)
  metrics = split_metrics(apply_fn, variables, splits)
  report = {"checkpoint": str(args.checkpoint), "kind": meta.get("kind"), **metrics}
  print(jsonio.dumps(report, indent=2))
  return 0


# ------------------------------------------------------------------- correct


def _per_alpha(alphas, accuracies) -> dict[float, float]:
  return dict(zip(map(float, alphas), map(float, accuracies)))


def cmd_correct(args) -> int:
  out = Path(args.out)
  report_path = Path(args.report) if args.report else out.with_name(out.name + "_report.json")
  if out.resolve() == Path(args.checkpoint).resolve():
    raise SystemExit("error: --out must differ from the input checkpoint; SAP never overwrites it.")
  _refuse_existing(out, args.overwrite, "checkpoint")
  _refuse_existing(report_path, args.overwrite, "report")
  variables, _, spec, splits, apply_fn = _load_run(args.checkpoint)
  n_trusted = min(args.n_trusted, len(splits.x_train))
  result = run_sap(
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
    eval_splits={"val_clean": (splits.x_val, splits.y_val_clean)},
  )
  before = split_metrics(apply_fn, variables, splits)
  after = split_metrics(apply_fn, result.variables, splits)
  sweep = result.sweep
  oracle_alpha, _ = sweep.best_for("val_clean")
  clean = sweep.splits["val_clean"]
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
      "baseline": sweep.baseline_accuracy,
      "per_alpha": _per_alpha(sweep.alphas, sweep.accuracies),
    },
    "oracle_alpha_clean_val": oracle_alpha,
    "sweep_clean_val": {
      "baseline": clean.baseline,
      "per_alpha": _per_alpha(sweep.alphas, clean.accuracies),
    },
    "before": before,
    "after": after,
    "layers": result.layers,
    "timings_s": result.timings,
  }
  source = str(Path(args.checkpoint).resolve())
  checkpoint.save_checkpoint(
    out,
    result.variables,
    {"kind": "sap", "spec": spec.to_dict(), "source": source, "sap": report},
    overwrite=args.overwrite,
  )
  jsonio.write_json_atomic(report_path, report, indent=2, sort_keys=False)
  _print_metrics("before SAP", before)
  alpha = "none beat the original model (kept)" if result.alpha is None else f"{result.alpha:g}"
  print(f"α chosen on the noisy validation split: {alpha}")
  _print_metrics("after SAP ", after)
  print(f"saved {out} and {report_path}")
  return 0


# ---------------------------------------------------------------------- demo


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
  progress = not args.quiet
  vanilla = train.train_model(model, splits.x_train, splits.y_train, spec.train, progress=progress)
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
  clean = train.train_model(
    model, splits.x_train, splits.y_train_clean, spec.train, progress=progress
  )

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


# ---------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
  """The `sap-jax` argument parser; every option's help shows its default."""
  parser = argparse.ArgumentParser(
    prog="sap-jax",
    description="SAP (Scaled Activation Projection): one-shot correction of models trained "
    "on noisy labels.",
  )
  parser.add_argument(
    "--compilation-cache",
    default=None,
    metavar="DIR|off",
    help="JAX persistent compilation cache folder, so a later run in a new process loads its "
    f"compiled programs instead of compiling them; 'off' disables it (default: "
    f"${compilation.ENV_VAR}, else {compilation.default_cache_dir()})",
  )
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser(
    "train",
    help="train a model on noisy labels and save a checkpoint",
    formatter_class=_HelpFormatter,
  )
  _add_run_args(p)
  p.add_argument("--out", required=True, help="checkpoint directory to create")
  p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_train)

  p = sub.add_parser(
    "evaluate",
    help="clean test / noisy val accuracy and memorisation of a checkpoint",
    formatter_class=_HelpFormatter,
  )
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train` or `sap-jax correct`")
  p.set_defaults(func=cmd_evaluate)

  sap = _keyword_defaults(run_sap)
  p = sub.add_parser(
    "correct", help="correct a trained checkpoint with SAP", formatter_class=_HelpFormatter
  )
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train`")
  p.add_argument("--out", required=True, help="new checkpoint directory (never the input)")
  p.add_argument("--report", default=None, help="JSON report path (default: <out>_report.json)")
  p.add_argument("--overwrite", action="store_true", help="replace an existing --out / --report")
  p.add_argument(
    "--alphas",
    type=_floats,
    default=_floats_text(DEFAULT_ALPHAS),
    help="α grid, comma-separated",
  )
  p.add_argument(
    "--n-trusted",
    type=int,
    default=sap["n_trusted"],
    help="trusted-set size (paper: 1000; capped at the training size)",
  )
  p.add_argument(
    "--score", default=sap["score"], choices=trusted.SCORES, help="how to rank trusted samples"
  )
  p.add_argument(
    "--class-balanced",
    action="store_true",
    default=sap["class_balanced"],
    help="pick n-trusted/K samples per class",
  )
  p.add_argument(
    "--exclude",
    action="append",
    default=[],
    metavar="PATTERN",
    help="layer path glob to leave unchanged, e.g. head (repeatable)",
  )
  p.add_argument(
    "--batch-size", type=int, default=sap["batch_size"], help="samples per forward pass"
  )
  p.set_defaults(func=cmd_correct)

  p = sub.add_parser(
    "demo",
    help="the whole story on digits: noisy training → SAP → clean retrain",
    formatter_class=_HelpFormatter,
  )
  p.add_argument("--noise", default="symmetric:0.25", help="label-noise spec")
  p.add_argument("--epochs", type=int, default=100, help="training epochs (batch 64, lr 0.05)")
  p.add_argument("--n-trusted", type=int, default=500, help="trusted-set size")
  p.add_argument("--seed", type=int, default=0, help="seeds noise, split and training")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.set_defaults(func=cmd_demo)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  compilation.enable_persistent_cache(args.compilation_cache)
  try:
    return args.func(args)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
