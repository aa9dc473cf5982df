"""Runner of experiments/configs/differentiable.py: differentiable SAP on Table 1's models.

    python -m experiments.differentiable experiments/configs/differentiable.py \
        --checkpoint-dir experiments/results/_work/checkpoints [--shard I/N] [--only-table]

One record per vanilla model (``<workdir>/cells/<vanilla key>.json``, finished ones are
skipped), then ``table.md`` and the plots (``sensitivity_<dataset>.png``) from all
records. Every number comes from the public API: `sap_jax.run_sap`,
`sap_jax.tune_alpha`, `sap_jax.sensitivity_curve`, `sap_jax.trusted_influence`,
`sap_jax.sweep_alpha`.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import config as cfg
from experiments import grid
from experiments.tables import fmt_mean_std, mean_std
from sap_jax import safe_write
from sap_jax.jsonio import json_object, write_json
from sap_jax.layers import path_name

DEFAULT_WORKDIR = Path("experiments/results/differentiable")


def _load_settings(path: str):
  spec = importlib.util.spec_from_file_location("_differentiable_settings", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _vanilla_runs(settings) -> list[tuple[str, Any, grid.Cell]]:
  """(vanilla key, RunSpec, a cell of it) of every vanilla model of the base config."""
  config, _ = cfg.load_config(settings.BASE_CONFIG)
  seen: dict[str, tuple[str, Any, grid.Cell]] = {}
  for cell in grid.expand(config):
    seen.setdefault(cell.vanilla_key, (cell.vanilla_key, cell.spec, cell))
  return list(seen.values())


def _is_record(path: Path) -> bool:
  doc = json_object(path)
  return doc is not None and "tuned" in doc


RECORD_KIND = safe_write.Kind("differentiable-SAP record", _is_record)


def _in_our_workdir(path: Path) -> bool:
  return any(_is_record(f) for f in (path.parent / "cells").glob("*.json"))


OUTPUT_KIND = safe_write.Kind("differentiable-SAP table or plot", _in_our_workdir)


def check_workdir(workdir: Path) -> None:
  """Refuses a folder that holds something other than this runner's records and outputs,
  before any work: its tables and plots are rewritten on every run."""
  workdir = Path(workdir)
  if not workdir.exists() or not any(workdir.iterdir()):
    return
  if not any(_is_record(f) for f in (workdir / "cells").glob("*.json")):
    raise FileExistsError(
      f"{workdir} is not empty and holds no differentiable-SAP records; this runner rewrites "
      "table.md and the plots of its workdir: pass an empty or new --workdir."
    )


def _write(path: Path, obj: Any) -> None:
  """A record, written atomically; only a record of this runner is ever replaced."""
  write_json(path, obj, RECORD_KIND, overwrite=True)


def _precision_at(order: np.ndarray, mask: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
  return {str(k): float(mask[order[:k]].mean()) for k in ks if k <= len(order)}


def _auroc(scores: np.ndarray, mask: np.ndarray) -> float | None:
  """P(score of a mislabelled sample > score of a clean one), ties count half."""
  pos, neg = scores[mask], scores[~mask]
  if len(pos) == 0 or len(neg) == 0:
    return None
  greater = (pos[:, None] > neg[None, :]).mean()
  ties = (pos[:, None] == neg[None, :]).mean()
  return float(greater + 0.5 * ties)


def run_model(settings, key: str, spec, checkpoint_dir: Path) -> dict[str, Any]:
  """Everything of one vanilla model: the record."""
  import sap_jax as sj
  from experiments.run import load_vanilla
  from sap_jax.baselines import clip_budget
  from sap_jax.evaluation import evaluate

  van = load_vanilla(spec, key, checkpoint_dir)
  s = van.splits
  apply_fn, variables = van.apply_fn, van.variables
  n = clip_budget(settings.N_TRUSTED, len(s.x_train))
  t0 = time.perf_counter()
  sap = sj.run_sap(
    apply_fn,
    variables,
    s.x_train,
    s.y_train,
    s.x_val,
    s.y_val,
    n_trusted=n,
    seed=spec.seed,
    eval_splits={"test": (s.x_test, s.y_test), "val_clean": (s.x_val, s.y_val_clean)},
  )
  t_sap = time.perf_counter() - t0
  sweep, dec = sap.sweep, sap.decomposition
  alphas = [float(a) for a in sweep.alphas]
  test = lambda v: evaluate(apply_fn, v, s.x_test, s.y_test)["accuracy"]  # noqa: E731
  oracle_alpha, _ = sweep.best_for("val_clean")
  rec: dict[str, Any] = {
    "vanilla_key": key,
    "dataset": spec.dataset,
    "noise": spec.noise if isinstance(spec.noise, str) else str(spec.noise),
    "seed": int(spec.seed),
    "n_train": len(s.x_train),
    "n_val": len(s.x_val),
    "n_trusted": n,
    "vanilla_test": sweep.splits["test"].baseline,
    "grid_alpha": sweep.best_alpha,
    "grid_test": sweep.accuracy_at("test", sweep.best_alpha),
    "grid_val_noisy": sweep.best_accuracy,
    "oracle_alpha": oracle_alpha,
    "oracle_test": sweep.accuracy_at("test", oracle_alpha),
    "sap_time_s": t_sap,
    "layers": [path_name(p) for p in dec.paths],
  }
  # α to start tuning / take gradients at: the grid's choice, else the grid's best
  # noisy-val α even though it did not beat the unchanged model (recorded).
  start = sweep.best_alpha
  if start is None:
    start = alphas[int(np.argmax(sweep.accuracies))]
  rec["start_alpha"] = start

  tuned = {}
  runs = [(label, kw, s.y_val) for label, kw in settings.TUNE.items()]
  runs.append(("tuned on clean val †", settings.TUNE[settings.CLEAN_TUNE], s.y_val_clean))
  for label, kw, y in runs:
    t = time.perf_counter()
    r = sj.tune_alpha(apply_fn, variables, dec, s.x_val, y, start, seed=0, **kw)
    dt = time.perf_counter() - t
    kept = sweep.best_alpha is None and label != "tuned on clean val †"
    # With no grid α beating the unchanged model, run_sap keeps it (no tuning).
    acc = rec["vanilla_test"] if kept else test(sj.apply_alpha(variables, dec, r.alpha))
    tuned[label] = {
      "test": acc,
      "alpha": {path_name(p): a for p, a in r.alpha.items()},
      "steps": r.steps,
      "penalty": r.penalty,
      "improved": r.improved,
      "heldout_accuracy": r.heldout_accuracy,
      "heldout_accuracy_start": r.heldout_accuracy_start,
      "heldout_loss": r.heldout_loss,
      "heldout_loss_start": r.heldout_loss_start,
      "val_accuracy": r.val_accuracy,
      "kept_unchanged_model": kept,
      "time_s": dt,
    }
  rec["tuned"] = tuned

  sens = {}
  for name, y in (("val_noisy", s.y_val), ("val_clean", s.y_val_clean)):
    c = sj.sensitivity_curve(apply_fn, variables, dec, s.x_val, y, alphas)
    sens[name] = {
      "alphas": alphas,
      "loss": c.loss.tolist(),
      "per_layer": {path_name(p): v.tolist() for p, v in c.per_layer.items()},
    }
  rec["sensitivity"] = sens

  trusted = np.asarray(sap.trusted_indices)
  x_trusted = np.asarray(s.x_train)[trusted]
  t = time.perf_counter()
  inf = sj.trusted_influence(apply_fn, variables, dec, x_trusted, s.x_val, s.y_val, start)
  rec["influence_time_s"] = time.perf_counter() - t
  mask = np.asarray(s.noise_mask)[trusted]
  losses = np.asarray(sj.per_example_loss(apply_fn, variables, x_trusted, s.y_train[trusted]))
  worst = np.argsort(-inf.scores, kind="stable")
  by_loss = np.argsort(-losses, kind="stable")
  rec["influence"] = {
    "alpha": start,
    "noise_rate": float(mask.mean()),
    "n_mislabelled": int(mask.sum()),
    "precision_influence": _precision_at(worst, mask, settings.INFLUENCE_K),
    "precision_loss": _precision_at(by_loss, mask, settings.INFLUENCE_K),
    "auroc_influence": _auroc(inf.scores, mask),
    "auroc_loss": _auroc(losses, mask),
    "per_layer_auroc": {path_name(p): _auroc(v, mask) for p, v in inf.per_layer.items()},
  }

  rec["influence_random"] = random_trusted_influence(settings, van, start, alphas)
  rec["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
  return rec


def random_trusted_influence(settings, van, alpha: float, alphas) -> dict[str, Any]:
  """Influence on a trusted set drawn at random from the training set (it holds the
  mislabelled samples at the data's noise rate), its precision at k, and SAP recomputed
  without the k samples it ranks worst against without k random ones."""
  import sap_jax as sj
  from sap_jax.baselines import clip_budget

  s, apply_fn, variables = van.splits, van.apply_fn, van.variables
  n = clip_budget(settings.N_TRUSTED, len(s.x_train))
  rng = np.random.default_rng(van.spec.seed)
  trusted = np.sort(rng.choice(len(s.x_train), n, replace=False))
  x_trusted = np.asarray(s.x_train)[trusted]
  mask = np.asarray(s.noise_mask)[trusted]
  test = {"test": (s.x_test, s.y_test)}

  def sap_on(x):
    stats = sj.activation_stats(apply_fn, variables, sj.batched(x, 256))
    dec = sj.decompose(variables, stats, method="eigh")  # influence needs every basis
    return dec, sj.sweep_alpha(apply_fn, variables, dec, alphas, s.x_val, s.y_val, eval_splits=test)

  dec, sweep = sap_on(x_trusted)
  at = sweep.best_alpha if sweep.best_alpha is not None else alpha
  inf = sj.trusted_influence(apply_fn, variables, dec, x_trusted, s.x_val, s.y_val, at)
  losses = np.asarray(sj.per_example_loss(apply_fn, variables, x_trusted, s.y_train[trusted]))
  worst = np.argsort(-inf.scores, kind="stable")
  out = {
    "alpha": at,
    "grid_alpha": sweep.best_alpha,
    "test": sweep.accuracy_at("test", sweep.best_alpha),
    "noise_rate": float(mask.mean()),
    "n_mislabelled": int(mask.sum()),
    "precision_influence": _precision_at(worst, mask, settings.INFLUENCE_K),
    "precision_loss": _precision_at(np.argsort(-losses, kind="stable"), mask, settings.INFLUENCE_K),
    "auroc_influence": _auroc(inf.scores, mask),
    "auroc_loss": _auroc(losses, mask),
    "per_layer_auroc": {path_name(p): _auroc(v, mask) for p, v in inf.per_layer.items()},
    "drop": {},
  }
  for k in settings.DROP_K:
    if k >= n:
      continue
    for how, order in (("influence", worst), ("random", rng.permutation(n))):
      _, sw = sap_on(x_trusted[np.sort(order[k:])])
      out["drop"][f"{how}:{k}"] = {
        "alpha": sw.best_alpha,
        "test": sw.accuracy_at("test", sw.best_alpha),
        "dropped_mislabelled": int(mask[order[:k]].sum()),
      }
  return out


# ---------------------------------------------------------------------------
# Tables and plots.
# ---------------------------------------------------------------------------

NOISE_ORDER = ("symmetric:0.1", "symmetric:0.25", "asymmetric:0.1", "asymmetric:0.25")
DATASETS = (("digits", "digits"), ("mnist1d", "MNIST-1D"))


def _groups(records: list[dict]) -> list[tuple[str, list[dict]]]:
  out = []
  for ds, label in DATASETS:
    for noise in NOISE_ORDER:
      recs = [r for r in records if r["dataset"] == ds and r["noise"] == noise]
      if recs:
        out.append((f"{label} {grid.pretty_noise(noise)}", recs))
  return out


def _row(groups, get) -> list[str]:
  cells, means = [], []
  for _, recs in groups:
    vals = [100 * get(r) for r in recs]
    m, sd, k = mean_std(vals)
    cells.append(fmt_mean_std(m, sd, k))
    means.append(m)
  return cells + [f"{np.mean(means):.2f}"]


def _md(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
  lines += ["| " + " | ".join(r) + " |" for r in rows]
  return "\n".join(lines)


def render(records: list[dict], settings) -> str:
  groups = _groups(records)
  header = ["", *(g for g, _ in groups), "Avg."]
  parts = [
    "# Differentiable SAP on the Table 1 settings",
    "",
    f"{len(records)} vanilla models; mean ± std over seeds. Generated by "
    "`python -m experiments.differentiable experiments/configs/differentiable.py`.",
    "",
    "## Clean test accuracy (%): grid α vs per-layer α learned on the noisy validation split",
    "",
  ]
  rows = [["Vanilla", *_row(groups, lambda r: r["vanilla_test"])]]
  rows.append(["SAP (grid α, noisy val)", *_row(groups, lambda r: r["grid_test"])])
  for label in list(settings.TUNE) + ["tuned on clean val †"]:
    rows.append([f"SAP {label}", *_row(groups, lambda r, lb=label: r["tuned"][lb]["test"])])
  rows.append(["SAP (oracle grid α) †", *_row(groups, lambda r: r["oracle_test"])])
  parts += [_md(header, rows), ""]
  parts += [
    "Tuning details (per setting: models where the CV moved α off the start / all; "
    "mean steps chosen; mean pooled held-out accuracy start → chosen, %):",
    "",
  ]
  det = []
  for label in settings.TUNE:
    row = [label]
    for _, recs in groups:
      t = [r["tuned"][label] for r in recs]
      row.append(
        f"{sum(x['improved'] for x in t)}/{len(t)}; {np.mean([x['steps'] for x in t]):.0f}; "
        f"{100 * np.mean([x['heldout_accuracy_start'] for x in t]):.1f} → "
        f"{100 * np.mean([x['heldout_accuracy'] for x in t]):.1f}"
      )
    det.append(row)
  parts += [_md(["", *(g for g, _ in groups)], det), ""]

  ks = [str(k) for k in settings.INFLUENCE_K]
  for field, title in (
    ("influence", "the trusted set of SAP (lowest training loss)"),
    ("influence_random", "a trusted set drawn at random from the training set"),
  ):
    if not all(field in r for _, recs in groups for r in recs):
      continue
    prow = []
    for name, recs in groups:
      inf = [r[field] for r in recs]
      rate = 100 * np.mean([i["noise_rate"] for i in inf])
      cells = [name, f"{rate:.1f} ({np.mean([i['n_mislabelled'] for i in inf]):.0f})"]
      has = [i for i in inf if i["n_mislabelled"] > 0]
      for k in ks:
        a = [100 * i["precision_influence"][k] for i in has if k in i["precision_influence"]]
        b = [100 * i["precision_loss"][k] for i in has if k in i["precision_loss"]]
        cells.append(f"{np.mean(a):.1f} / {np.mean(b):.1f}" if a else "–")
      au = [i["auroc_influence"] for i in has if i["auroc_influence"] is not None]
      al = [i["auroc_loss"] for i in has if i["auroc_loss"] is not None]
      cells.append(f"{np.mean(au):.2f} / {np.mean(al):.2f}" if au else "–")
      cells.append(f"{len(has)}/{len(inf)}")
      prow.append(cells)
    parts += [
      f"## Trusted-sample influence on {title}: precision at k of the samples ranked worst",
      "",
      "chance: the trusted set's noise rate % (mislabelled members, mean over seeds); "
      "each cell: influence / training loss (both highest first), %, mean over the seeds "
      "whose trusted set holds a mislabelled sample (last column).",
      "",
      _md(["setting", "chance", *(f"P@{k}" for k in ks), "AUROC", "seeds"], prow),
      "",
    ]
  if all("influence_random" in r for _, recs in groups for r in recs):
    parts += [
      "## Random trusted set: SAP recomputed without the k samples ranked worst (test %)",
      "",
    ]
    drow = [["SAP, random trusted set", *_row(groups, lambda r: r["influence_random"]["test"])]]
    for k in settings.DROP_K:
      for how in ("influence", "random"):
        key = f"{how}:{k}"
        if all(key in r["influence_random"]["drop"] for _, recs in groups for r in recs):
          drow.append(
            [
              f"drop {k} ({how})",
              *_row(groups, lambda r, kk=key: r["influence_random"]["drop"][kk]["test"]),
            ]
          )
    parts += [_md(header, drow), ""]
  return "\n".join(parts)


def plot_sensitivity(records: list[dict], workdir: Path) -> list[Path]:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  out = []
  for ds, label in DATASETS:
    recs = [r for r in records if r["dataset"] == ds]
    if not recs:
      continue
    fig, axes = plt.subplots(2, 4, figsize=(17, 7), squeeze=False, sharex=True)
    for j, noise in enumerate(NOISE_ORDER):
      group = [r for r in recs if r["noise"] == noise]
      for i, split in enumerate(("val_noisy", "val_clean")):
        ax = axes[i][j]
        if not group:
          ax.axis("off")
          continue
        alphas = group[0]["sensitivity"][split]["alphas"]
        for layer in group[0]["layers"]:
          curves = np.asarray([r["sensitivity"][split]["per_layer"][layer] for r in group])
          ax.plot(alphas, curves.mean(0), marker="o", ms=3, label=layer)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_title(f"{label} {grid.pretty_noise(noise)}: {split.replace('_', ' ')}")
        ax.set_xlabel("α (shared)")
        ax.set_ylabel("∂L/∂log α_l")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(
      f"{label}: per-layer sensitivity of the validation cross-entropy (mean over seeds)"
    )
    fig.tight_layout()
    path = workdir / f"sensitivity_{ds}.png"
    buf = io.BytesIO()
    fig.savefig(buf, dpi=100, format="png")
    plt.close(fig)
    safe_write.write_file(path, buf.getvalue(), OUTPUT_KIND, overwrite=True)
    out.append(path)
  return out


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("settings", help="experiments/configs/differentiable.py")
  p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
  p.add_argument("--checkpoint-dir", type=Path, required=True, help="Table 1 vanilla checkpoints")
  p.add_argument("--shard", default="0/1", help="I/N: every N-th model from the I-th")
  p.add_argument("--only-table", action="store_true")
  p.add_argument("--max-models", type=int, default=None)
  args = p.parse_args(argv)
  settings = _load_settings(args.settings)
  i, n = (int(v) for v in args.shard.split("/"))
  runs = _vanilla_runs(settings)
  cells_dir = args.workdir / "cells"
  check_workdir(args.workdir)
  if not args.only_table:
    todo = [r for j, r in enumerate(runs) if j % n == i]
    done = 0
    for key, spec, _ in todo:
      path = cells_dir / f"{key}.json"
      if path.exists():
        rec = json.loads(path.read_text())
        if "influence_random" not in rec:  # records from before that part existed
          from experiments.run import load_vanilla

          van = load_vanilla(spec, key, args.checkpoint_dir)
          rec["influence_random"] = random_trusted_influence(
            settings, van, rec["start_alpha"], rec["sensitivity"]["val_noisy"]["alphas"]
          )
          rec.pop("drop", None)
          _write(path, rec)
        continue
      if args.max_models is not None and done >= args.max_models:
        break
      t = time.perf_counter()
      rec = run_model(settings, key, spec, args.checkpoint_dir)
      _write(path, rec)
      done += 1
      tn = rec["tuned"]
      print(
        f"{key}: vanilla {100 * rec['vanilla_test']:.1f} grid {100 * rec['grid_test']:.1f} "
        + " ".join(f"{lb} {100 * v['test']:.1f}" for lb, v in tn.items())
        + f" oracle {100 * rec['oracle_test']:.1f} ({time.perf_counter() - t:.0f} s)",
        flush=True,
      )
  records = [json.loads(f.read_text()) for f in sorted(cells_dir.glob("*.json")) if _is_record(f)]
  if records:
    safe_write.write_file(
      args.workdir / "table.md", render(records, settings), OUTPUT_KIND, overwrite=True
    )
    plot_sensitivity(records, args.workdir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
