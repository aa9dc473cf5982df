"""`sap-jax correct`: SAP on a trained checkpoint, the corrected checkpoint and its report.

`cmd_correct` checks its outputs, loads the run, runs `sap_jax.run_sap` (and
`sap_jax.tune_alpha` with ``--tune``), saves the corrected checkpoint and the JSON report
and prints the α table (`alpha_table`) and, when the original model was kept, why
(`memorisation_hint`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import sap_jax.nnx as sap_nnx
from sap_jax import checkpoint, jsonio, run_sap, safe_write
from sap_jax.cli import figure
from sap_jax.cli.devices import devices_record, first_process, load_run_on_devices
from sap_jax.cli.progress import Progress
from sap_jax.cli.runs import Run, labels_record
from sap_jax.cli.train_command import print_metrics
from sap_jax.metrics import split_metrics
from sap_jax.tuning import tuning_report

__all__ = ["MEMORISATION_HINT_BELOW", "alpha_table", "cmd_correct", "memorisation_hint"]


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
  run, splits = load_run_on_devices(args, progress.say)
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
    mesh=args.device_mesh,
  )
  before = split_metrics(apply_fn, variables, splits, mesh=args.device_mesh)
  after = split_metrics(apply_fn, corrected, splits, mesh=args.device_mesh)
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
  print_metrics("before SAP", before)
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
  print_metrics("after SAP ", after)
  print(f"projected {len(result.layers)} layers", end="")
  print(f"; not projected: {len(result.skipped)}" if result.skipped else "")
  for path, why in result.skipped.items():
    print(f"  not projected {path}: {why}")
  print(f"saved {out} and {report_path}" + ("" if png is None else f" (figure: {png})"))
  return 0
