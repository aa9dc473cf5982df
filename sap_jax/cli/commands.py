"""The `sap-jax` commands (train | evaluate | correct | demo), their parser and `main`.

The edge of the library: argument parsing, files and printing live here; every
step calls the public functions of the package, and every default and choice
comes from it (`TrainConfig`'s fields, `RunSpec`'s, `run_sap`'s keyword defaults,
`DEFAULT_ALPHAS`, `trusted.SCORES`). `main` turns on JAX's persistent compilation cache
(`sap_jax.compilation`; global option ``--compilation-cache DIR|off``), so a later command
in a new process loads the compiled programs of an earlier one instead of compiling them.

What a user sees:

* every output path of a command is checked against the overwrite rule
  (`sap_jax.safe_write`) before any work: without ``--overwrite`` nothing existing is
  touched; with it only an existing sap_jax checkpoint / report / figure is replaced; never
  the input checkpoint, anything in it or containing it;
* a user error is one ``error: …`` line on stderr naming the problem and the fix (exit
  status 2), never a traceback; Ctrl-C is one line saying what was written (status 130);
* progress goes to stderr: a live bar on a terminal, one line per update in a file or a
  pipe, nothing with ``--quiet``;
* a checkpoint records the content fingerprint of its data (`sap_jax.provenance`) and
  the data root made absolute; ``correct``/``evaluate`` take ``--data-root`` for moved
  data and refuse changed data unless ``--allow-changed-data`` is passed;
* many devices and hosts: ``--data-parallel`` (or ``--mesh data=N``) shards every split
  over all devices; ``--distributed`` (run on every host) joins the processes first
  (`jax.distributed.initialize`); only process 0 prints and writes reports, and every
  process takes part in saving and loading checkpoints (`sap_jax.checkpoint`).

This module holds the commands, the parser and `main` (reached through `sap_jax.cli.main`,
which answers ``--help`` and ``--version`` from `sap_jax.cli.top` without importing it);
beside it: `top` (the parser's top level), `args` (argument types and defaults), `errors`
(user errors and exit codes), `progress` (the progress lines), `devices` (the many-device
flags and sharded splits), `runs` (a run's data, model and checkpoint) and `figure` (the PNG
beside a `correct` report).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import sap_jax.nnx as sap_nnx
from sap_jax import (
  DEFAULT_ALPHAS,
  checkpoint,
  compilation,
  data,
  init_from,
  jsonio,
  models,
  noise,
  provenance,
  run_sap,
  safe_write,
  solve,
  train,
  trusted,
)
from sap_jax.cli import figure, interrupts
from sap_jax.cli.args import (
  add_layer_call_arg,
  alpha_grid,
  field_defaults,
  floats_text,
  keyword_defaults,
  kv,
  positive_int,
)
from sap_jax.cli.devices import (
  add_device_args,
  devices_record,
  first_process,
  note,
  on_devices,
  start_devices,
)
from sap_jax.cli.errors import EXIT_INTERRUPTED, EXIT_USER_ERROR, UserError, error_text, one_line
from sap_jax.cli.progress import Progress
from sap_jax.cli.runs import (
  Run,
  checked_model,
  data_record,
  labels_record,
  load_run,
  load_spec_data,
)
from sap_jax.cli.top import top_parser
from sap_jax.metrics import split_metrics
from sap_jax.models.nnx_zoo import NNX_MODELS
from sap_jax.spec import APIS, RunSpec, build_model, build_splits
from sap_jax.train_config import AUGMENTS
from sap_jax.tuning import tuning_report

__all__ = ["EXIT_INTERRUPTED", "EXIT_USER_ERROR", "UserError", "build_parser", "main"]


def _print_metrics(name: str, m: dict[str, float | None]) -> None:
  fit = m.get("fit_noisy")
  fit = "" if fit is None else f", fits {100 * fit:.1f}% of the corrupted labels"
  print(f"{name}: clean test accuracy {100 * m['test_accuracy']:.2f}%{fit}")


# --------------------------------------------------------------------- train


def _add_run_args(p: argparse.ArgumentParser) -> None:
  run = field_defaults(RunSpec)
  cfg = field_defaults(train.TrainConfig)
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
    type=kv,
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
    "--api",
    default=run["api"],
    choices=APIS,
    help="Flax API of the model: the Linen module, or its NNX twin (nnx: "
    f"{', '.join(sorted(NNX_MODELS))}); correct/evaluate read it from the checkpoint",
  )
  g.add_argument(
    "--model-kw",
    type=kv,
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
    "--augment",
    default=cfg["augment"],
    choices=AUGMENTS,
    help="training-time augmentation: none, auto (the data set's published recipe: "
    "cifar* → cifar, clothing1m/webvision/imagenet and folders of side >= 128 → imagenet, "
    "else none), cifar (flip + 4-pixel padded crop) or imagenet (RandomResizedCrop + flip)",
  )
  t.add_argument(
    "--init-from",
    default=run["init_from"],
    metavar="PATH",
    help="start from pretrained weights (.npz/.safetensors of named arrays, a checkpoint, "
    "an orbax directory; torchvision state dicts are converted); the head is "
    "re-initialised for a new number of classes",
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
    augment=args.augment,
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
    api=args.api,
    init_from=args.init_from,
  )


def _check_majority_noise(spec_noise: str, num_classes: int, args, dataset=None) -> None:
  """Refuses noise past which a class's true label is no longer its most frequent one,
  unless ``--allow-majority-noise``."""
  if args.allow_majority_noise:
    return
  why = noise.majority_lost(
    spec_noise,
    num_classes,
    labels=None if dataset is None else dataset.y_train,
    coarse_labels=None if dataset is None else dataset.coarse_train,
  )
  if why is not None:
    raise UserError(
      f"--noise {spec_noise}: {why}, so the true class is no longer the majority of its own "
      "samples; pass a lower rate, or --allow-majority-noise to run it anyway."
    )


def cmd_train(args) -> int:
  (out,) = safe_write.check_targets(
    [(args.out, checkpoint.KIND, "checkpoint")], overwrite=args.overwrite
  )
  spec = _spec_from_args(args)
  dataset = load_spec_data(spec)
  _check_majority_noise(spec.noise, dataset.num_classes, args, dataset)
  splits = build_splits(spec, stream=True)
  model, _ = checked_model(spec, splits)
  labels = labels_record(splits)  # as derived from the spec, before any cut
  progress = Progress(args.quiet)
  splits = on_devices(splits, args.device_mesh, progress.say)
  progress.say(
    f"training {spec.model} on {spec.dataset} with {spec.noise} noise: "
    f"{len(splits.x_train)} train ({int(splits.noise_mask.sum())} corrupted), "
    f"{len(splits.x_val)} noisy val, {len(splits.x_test)} clean test"
  )
  train_fn = sap_nnx.train_model if spec.api == "nnx" else train.train_model
  x_val, y_val = splits.labelled("val")
  result = train_fn(
    model,
    *splits.labelled("train"),
    spec.train,
    x_val=x_val,
    y_val=y_val,
    dataset=spec.dataset,
    init_from=spec.init_from,
    **progress.train_options(spec.train.epochs),
  )
  if result.pretrained is not None:
    print(init_from.describe(result.pretrained, spec.init_from))
  if spec.api == "nnx":
    apply_fn, eval_variables = sap_nnx.functional(result.model)
    variables = sap_nnx.variables_of(result.model)
  else:
    apply_fn, eval_variables = train.eval_apply_fn(model), result.variables
    variables = result.variables
  metrics = split_metrics(apply_fn, eval_variables, splits)
  metrics["train_time_s"] = result.train_time_s
  metadata = {
    "kind": "trained",
    "spec": spec.to_dict(),
    "data": data_record(spec, provenance.data_fingerprint(dataset)),
    "labels": labels,
    "metrics": metrics,
    "history": result.history,
  }
  if result.pretrained is not None:
    metadata["pretrained"] = init_from.record(result.pretrained, spec.init_from)
  if args.device_mesh is not None:
    metadata["devices"] = devices_record(splits)
  path = checkpoint.save_checkpoint(out, variables, metadata, overwrite=args.overwrite)
  args.written.append(path)
  _print_metrics("vanilla", metrics)
  print(f"saved {path}")
  return 0


# ------------------------------------------------------------------ evaluate


def cmd_evaluate(args) -> int:
  report_path = None
  if args.report:
    (report_path,) = safe_write.check_targets(
      [(args.report, jsonio.REPORT, "report")],
      overwrite=args.overwrite,
      protect=[args.checkpoint],
    )
  progress = Progress(args.quiet)
  run = load_run(
    args.checkpoint,
    data_root=args.data_root,
    allow_changed_data=args.allow_changed_data,
    say=note,
    mesh=args.device_mesh,
  )
  splits = on_devices(run.splits, args.device_mesh, progress.say)
  metrics = split_metrics(run.apply_fn, run.variables, splits)
  report = {"checkpoint": str(args.checkpoint), "kind": run.meta.get("kind"), **metrics}
  if args.device_mesh is not None:
    report["devices"] = devices_record(splits)
  if run.data_changed:
    report["data_changed"] = run.data_changed
  if report_path is not None and first_process():  # one report, from process 0
    protect = [Path(args.checkpoint).absolute()]
    jsonio.write_report(report_path, report, overwrite=args.overwrite, protect=protect)
    args.written.append(report_path)
  print(jsonio.dumps(report, indent=2))
  return 0


# ------------------------------------------------------------------- correct


def _per_alpha(alphas, accuracies) -> dict[float, float]:
  return dict(zip(map(float, alphas), map(float, accuracies)))


MEMORISATION_HINT_BELOW = 0.5
"""`correct` explains a kept original model when it fits fewer than this share of its
corrupted training labels (``fit_noisy``): SAP corrects memorisation, and there is little."""


def _percent(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"


def alpha_table(report: dict[str, Any]) -> list[str]:
  """The α sweep of a `correct` report as text lines: one row for the original model and
  one per α, with the noisy and clean validation accuracies; the chosen row marked."""
  noisy, clean = report["sweep_noisy_val"], report.get("sweep_clean_val") or {}
  clean_per_alpha = {float(a): v for a, v in (clean.get("per_alpha") or {}).items()}
  chosen = report["chosen_alpha"]
  rows = [("original", noisy["baseline"], clean.get("baseline"), chosen is None)]
  for a, acc in noisy["per_alpha"].items():
    a = float(a)
    rows.append((f"{a:g}", acc, clean_per_alpha.get(a), chosen is not None and a == chosen))
  lines = [f"{'α':>10}{'noisy val':>12}{'clean val':>12}"]
  for name, acc, clean_acc, mark in rows:
    tail = "  ← chosen" if mark else ""
    lines.append(f"{name:>10}{_percent(acc):>12}{_percent(clean_acc):>12}{tail}")
  return lines


def memorisation_hint(report: dict[str, Any]) -> str | None:
  """Why SAP kept the original model, when the model memorised few of its noisy labels."""
  fit = report["before"].get("fit_noisy")
  if report["chosen_alpha"] is not None or fit is None or fit >= MEMORISATION_HINT_BELOW:
    return None
  return (
    f"note: no α beat the original model, which fits only {100 * fit:.1f}% of its corrupted "
    "training labels. SAP corrects memorisation of noisy labels, and this model has not "
    "memorised them: train it longer, to memorisation (e.g. more --epochs), then correct it."
  )


def _correct_targets(args) -> tuple[Path, Path, Path | None]:
  """``--out``, the report path and the figure's beside it (None with ``--no-figure``),
  checked against the overwrite rule before any work."""
  out = safe_write.user_path(args.out)
  report = Path(args.report) if args.report else out.with_name(out.name + "_report.json")
  targets = [(out, checkpoint.KIND, "checkpoint"), (report, jsonio.REPORT, "report")]
  if not args.no_figure:
    targets.append((figure.figure_path(report), figure.FIGURE, "figure"))
  out, report, *png = safe_write.check_targets(
    targets, overwrite=args.overwrite, protect=[args.checkpoint]
  )
  return out, report, (png or [None])[0]


def _run_sap(run: Run, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
  """`run_sap` on a loaded run: ``(result, corrected eval variables, variables to save)``
  (an NNX run through `sap_jax.nnx.run_sap`, saved as `sap_jax.nnx.variables_of`)."""
  if run.spec.api == "nnx":
    result = sap_nnx.run_sap(run.model, *args, **kwargs)
    return result, sap_nnx.functional(result.model)[1], sap_nnx.variables_of(result.model)
  result = run_sap(run.apply_fn, run.variables, *args, **kwargs)
  return result, result.variables, result.variables


def cmd_correct(args) -> int:
  out, report_path, png = _correct_targets(args)
  source = Path(args.checkpoint).absolute()
  progress = Progress(args.quiet)
  run = load_run(
    args.checkpoint,
    data_root=args.data_root,
    allow_changed_data=args.allow_changed_data,
    say=note,
    mesh=args.device_mesh,
  )
  splits = on_devices(run.splits, args.device_mesh, progress.say)
  apply_fn, variables = run.apply_fn, run.variables
  n_trusted = min(args.n_trusted, len(splits.x_train))
  result, corrected, saved = _run_sap(
    run,
    *splits.labelled("train"),
    *splits.labelled("val"),
    n_trusted=n_trusted,
    alphas=args.alphas,
    score=args.score,
    class_balanced=args.class_balanced,
    exclude=tuple(args.exclude),
    batch_size=args.batch_size,
    eval_splits={"val_clean": splits.eval_split("val_clean")},
    progress=progress.phase,
    tune=args.tune,
    method=args.method,
    calls=args.layer_call or "all",
  )
  before = split_metrics(apply_fn, variables, splits)
  after = split_metrics(apply_fn, corrected, splits)
  sweep = result.sweep
  oracle_alpha, _ = sweep.best_for("val_clean")
  clean = sweep.splits["val_clean"]
  report = {
    "input": str(source.resolve()),
    "output": str(out),
    "n_trusted": n_trusted,
    "score": args.score,
    "method": args.method,
    "class_balanced": args.class_balanced,
    "exclude": list(args.exclude),
    "layer_calls": args.layer_call or {},
    "repeated": [r._asdict() for r in result.repeated],
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
    "skipped": result.skipped,
    "tuning": None if result.tuning is None else tuning_report(result.tuning),
    "timings_s": result.timings,
  }
  if run.data_changed:
    report["data_changed"] = run.data_changed
  if args.device_mesh is not None:
    report["devices"] = devices_record(splits)
  metadata = {
    "kind": "sap",
    "spec": run.spec.to_dict(),
    "data": run.data,
    "labels": labels_record(run.splits),
    "source": str(source.resolve()),
    "sap": report,
  }
  checkpoint.save_checkpoint(out, saved, metadata, overwrite=args.overwrite, protect=[source])
  args.written.append(out)
  if first_process():  # one report, from process 0
    jsonio.write_report(report_path, report, overwrite=args.overwrite, protect=[source, out])
    args.written.append(report_path)
    if png is not None:
      protect = [source, out, report_path]
      png = figure.save_figure(
        png, report, result.decomposition, overwrite=args.overwrite, protect=protect
      )
      args.written.extend([png] if png is not None else [])
  _print_metrics("before SAP", before)
  print("α sweep (accuracy of the corrected model):")
  for line in alpha_table(report):
    print(line)
  alpha = "none beat the original model (kept)" if result.alpha is None else f"{result.alpha:g}"
  print(f"α chosen on the noisy validation split: {alpha}")
  hint = memorisation_hint(report)
  if hint is not None:
    print(hint)
  if result.tuning is not None:
    t = result.tuning
    per_layer = ", ".join(f"{n} {a:.3g}" for n, a in tuning_report(t)["alpha"].items())
    print(
      f"per-layer α ({t.steps} steps; held-out accuracy {100 * t.heldout_accuracy_start:.1f} → "
      f"{100 * t.heldout_accuracy:.1f} %): {per_layer}"
    )
  _print_metrics("after SAP ", after)
  print(f"projected {len(result.layers)} layers", end="")
  print(f"; not projected: {len(result.skipped)}" if result.skipped else "")
  for path, why in result.skipped.items():
    print(f"  not projected {path}: {why}")
  print(f"saved {out} and {report_path}" + ("" if png is None else f" (figure: {png})"))
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
  _check_majority_noise(spec.noise, splits.num_classes, args)
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


# ---------------------------------------------------------------------- main


def _add_data_check_args(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--data-root",
    default=None,
    help="where the checkpoint's data are now, if they moved (default: the absolute path "
    "recorded at training)",
  )
  p.add_argument(
    "--allow-changed-data",
    action="store_true",
    help="use data whose content differs from the training data's recorded fingerprint",
  )


def build_parser() -> argparse.ArgumentParser:
  """The `sap-jax` argument parser; every option's help shows its default. Its top level
  (global options, the commands) is `sap_jax.cli.top.top_parser`'s."""
  parser, commands = top_parser()

  p = commands["train"]
  _add_run_args(p)
  p.add_argument("--out", required=True, help="checkpoint directory to create")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sap_jax checkpoint at --out (nothing else is ever replaced)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  p.add_argument(
    "--allow-majority-noise",
    action="store_true",
    help="accept a --noise under which a class's true label is no longer the majority "
    "of its own samples (refused by default)",
  )
  add_device_args(p)
  p.set_defaults(func=cmd_train)

  p = commands["evaluate"]
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train` or `sap-jax correct`")
  p.add_argument(
    "--report", default=None, help="also write the metrics to this JSON file (default: none)"
  )
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sap_jax report at --report (nothing else, never the checkpoint)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  _add_data_check_args(p)
  add_device_args(p)
  p.set_defaults(func=cmd_evaluate)

  sap = keyword_defaults(run_sap)
  p = commands["correct"]
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train`")
  p.add_argument("--out", required=True, help="new checkpoint directory (never the input)")
  p.add_argument("--report", default=None, help="JSON report path (default: <out>_report.json)")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sap_jax checkpoint at --out / sap_jax report at --report / "
    "sap_jax figure beside it (nothing else, and never the input)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  p.add_argument(
    "--no-figure",
    action="store_true",
    help="skip the PNG otherwise written beside the report (<report stem>.png: the α "
    "curves and each layer's spectrum)",
  )
  _add_data_check_args(p)
  p.add_argument(
    "--alphas",
    type=alpha_grid,
    default=floats_text(DEFAULT_ALPHAS),
    help="α grid, comma-separated",
  )
  p.add_argument(
    "--n-trusted",
    type=positive_int,
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
    "--batch-size",
    type=positive_int,
    default=sap["batch_size"],
    help="samples per forward pass",
  )
  p.add_argument(
    "--method",
    choices=solve.METHODS,
    default=sap["method"],
    help="how each layer is decomposed: auto (eigh below "
    f"{solve.AUTO_MIN_WIDTH} inputs, above it eigh or one Cholesky per α, whichever the "
    "cost model finds cheaper), eigh (every layer), solve (every layer)",
  )
  p.add_argument(
    "--tune",
    choices=("per_layer",),
    default=None,
    help="after the α sweep, learn one α per layer on the noisy validation split "
    "(sap_jax.tune_alpha: 5-fold early stopping, never worse than the sweep's α on held-out "
    "folds); unset: one shared α from the grid",
  )
  add_layer_call_arg(p)
  add_device_args(p)
  p.set_defaults(func=cmd_correct)

  p = commands["demo"]
  p.add_argument("--noise", default="symmetric:0.25", help="label-noise spec")
  p.add_argument(
    "--epochs", type=positive_int, default=100, help="training epochs (batch 64, lr 0.05)"
  )
  p.add_argument("--n-trusted", type=positive_int, default=500, help="trusted-set size")
  p.add_argument("--seed", type=int, default=0, help="seeds noise, split and training")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.add_argument(
    "--allow-majority-noise",
    action="store_true",
    help="accept a --noise under which a class's true label is no longer the majority "
    "of its own samples (refused by default)",
  )
  p.set_defaults(func=cmd_demo)
  return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  """Library warnings (e.g. integer images converted) as one ``warning:`` line."""
  del category, filename, lineno, line
  print(f"warning: {one_line(message)}", file=file or sys.stderr)


@contextlib.contextmanager
def _output_of_this_process(args):
  """Only process 0 prints (errors excepted): the others run quiet, their standard
  output discarded."""
  if first_process():
    yield
    return
  args.quiet = True
  with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
    yield


def _closed_loop_report(unraisable) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and (
    str(unraisable.exc_value) == "Event loop is closed"
  )


def _drop_closed_loop_reports() -> None:
  """A failed checkpoint write (disk full, Ctrl-C) ends orbax's event loop while
  tensorstore's threads still post to it; each reports "RuntimeError: Event loop is
  closed" as an unraisable exception, possibly after the command has returned. The
  command line reports the failure itself in one line: those reports are dropped, for the
  rest of the process (every other one goes to the hook that was there)."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_closed_loop_reports", False):
    return

  def hook(unraisable) -> None:
    if not _closed_loop_report(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_reports = True
  sys.unraisablehook = hook


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0, 2 for a user error, 130 on Ctrl-C)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  args.written = []
  shown, warnings.showwarning = warnings.showwarning, _show_warning
  _drop_closed_loop_reports()
  try:
    with interrupts.installed():  # a Ctrl-C dropped in a finalizer is raised again
      start_devices(args)
      compilation.enable_persistent_cache(args.compilation_cache, "--compilation-cache")
      with _output_of_this_process(args):
        # One call site for every process: with jax ≥ 0.11 a compiled program carries
        # the Python traceback of its call, and processes whose programs differ wait
        # for each other's collectives forever (see `sap_jax.multihost`).
        return args.func(args)
  except KeyboardInterrupt:
    if args.written:
      done = " and ".join(str(p) for p in args.written)
      print(f"interrupted: only {done} was written.", file=sys.stderr)
    else:
      print("interrupted: nothing was written.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:
    text = error_text(e)
    if text is None:
      raise
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USER_ERROR
  finally:
    warnings.showwarning = shown


if __name__ == "__main__":
  sys.exit(main())
