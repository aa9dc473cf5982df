"""Results tables from cell records: mean ± std over seeds, best per column in bold.

Like the paper's Table 1: rows are methods (or training variants), columns are
data set × noise settings, each entry ``mean ± std`` of the clean test accuracy
(%) over seeds. ``std`` is the sample standard deviation (ddof = 1; a single
seed shows the mean alone). The best mean of each column is bold among the
rows that are corrections of the noisy model; reference rows (Retrain, which
trains on the clean labels, and every "(oracle α)" row, which picks α on the
clean validation labels) are marked † and never bolded. Ties at the printed
precision are all bold.

Files: ``table.md`` (the table plus memorisation, SAP's α choices and cost),
``table.csv`` (row, column, n, mean, std and the per-seed values) and
``cells.csv`` (one line per cell with every number).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import config as cfg
from experiments import grid
from experiments.outputs import generated_text, write_generated

__all__ = ["Table", "build_table", "fmt_mean_std", "mean_std", "to_markdown", "write_tables"]

ORACLE_SUFFIX = " (oracle α)"
DECIMALS = 2


@dataclasses.dataclass
class Table:
  """A pivot of one metric: ``values[(row, column)]`` = per-seed values (%)."""

  rows: list[str]
  columns: list[str]
  values: dict[tuple[str, str], list[float]]
  reference: set[str]
  metric: str
  average: bool = True

  def stats(self, row: str, col: str) -> tuple[float, float, int] | None:
    vals = self.values.get((row, col))
    return mean_std(vals) if vals else None

  def row_average(self, row: str) -> float | None:
    means = [self.stats(row, c) for c in self.columns]
    if any(m is None for m in means):
      return None
    return float(np.mean([m[0] for m in means]))

  def best(self, col: str | None) -> set[str]:
    """Rows with the best printed mean of ``col`` (None: the average column)."""
    scores = {}
    for row in self.rows:
      if row in self.reference:
        continue
      if col is None:
        value = self.row_average(row)
      else:
        st = self.stats(row, col)
        value = None if st is None else st[0]
      if value is not None:
        scores[row] = round(value, DECIMALS)
    if not scores:
      return set()
    top = max(scores.values())
    return {r for r, v in scores.items() if v == top}


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
  """``(mean, sample std (ddof=1; 0 for one value), n)``."""
  arr = np.asarray(values, np.float64)
  std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
  return float(arr.mean()), std, int(arr.size)


def fmt_mean_std(mean: float, std: float, n: int, *, sign: bool = False) -> str:
  """'85.31 ± 0.42' ('85.31' for a single seed; '+7.38 ± 2.52' with ``sign``)."""
  text = f"{mean:+.{DECIMALS}f}" if sign else f"{mean:.{DECIMALS}f}"
  return text if n <= 1 else f"{text} ± {std:.{DECIMALS}f}"


def _row_col(spec: cfg.TableSpec, cell: grid.Cell, *, oracle: bool = False) -> tuple[str, str]:
  parts = []
  for f in spec.rows:
    value = cell.field(f)
    if oracle and f == "method":
      value += ORACLE_SUFFIX
    parts.append(value)
  row = " / ".join(parts)
  if oracle and "method" not in spec.rows:
    row += ORACLE_SUFFIX
  col = " ".join(cell.field(f) for f in spec.columns)
  return row, col


def build_table(
  config: cfg.Config,
  cells: Sequence[grid.Cell],
  records: Mapping[str, dict],
  *,
  metric: str | None = None,
) -> Table:
  """Pivots the records of ``cells`` (order of rows/columns: the config's)."""
  spec = config.table
  metric = metric or spec.metric
  rows, cols, values = [], [], {}
  reference = set(spec.reference_rows)

  def add(row, col, value):
    if row not in rows:
      rows.append(row)
    if col not in cols:
      cols.append(col)
    if value is not None and not (isinstance(value, float) and math.isnan(value)):
      values.setdefault((row, col), []).append(100.0 * float(value))

  by_run = {(c.vanilla_key, c.method.display): records.get(c.key) for c in cells}
  for cell in cells:
    rec = records.get(cell.key)
    if rec is None:
      continue
    row, col = _row_col(spec, cell)
    add(row, col, rec.get(metric))
    if spec.delta and cell.method.display == spec.delta[1]:
      # Paired gain over the same vanilla model (same seed), as its own column.
      before = by_run.get((cell.vanilla_key, spec.delta[0]))
      dcol = col.replace(cell.field("method"), "Δ") if "method" in spec.columns else col + " Δ"
      if before is not None and rec.get(metric) is not None:
        add(row, dcol, rec[metric] - before[metric])
    if (
      spec.oracle_rows
      and cell.method.name == "sap"
      and metric == "test_accuracy"
      and "test_accuracy_oracle_alpha" in rec
    ):
      orow, _ = _row_col(spec, cell, oracle=True)
      reference.add(orow)
      add(orow, col, rec["test_accuracy_oracle_alpha"])
  return Table(rows, cols, values, reference, metric, spec.average)


def to_markdown(table: Table) -> str:
  """The pivot as a GitHub markdown table, best per column in bold."""
  show_avg = table.average and len(table.columns) > 1
  head = ["", *table.columns] + (["Avg."] if show_avg else [])
  lines = [
    "| " + " | ".join(head) + " |",
    "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|",
  ]
  best = {c: table.best(c) for c in table.columns}
  best_avg = table.best(None) if show_avg else set()
  for row in table.rows:
    label = row + (" †" if row in table.reference else "")
    out = [label]
    for col in table.columns:
      st = table.stats(row, col)
      if st is None:
        out.append("–")
        continue
      text = fmt_mean_std(*st, sign=col.endswith("Δ"))
      out.append(f"**{text}**" if row in best[col] else text)
    if show_avg:
      avg = table.row_average(row)
      text = "–" if avg is None else f"{avg:.{DECIMALS}f}"
      out.append(f"**{text}**" if row in best_avg else text)
    lines.append("| " + " | ".join(out) + " |")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# The side tables: memorisation, SAP's α choices, cost.
# ---------------------------------------------------------------------------


def _pct(values: Sequence[float | None]) -> str:
  vals = [100 * v for v in values if v is not None]
  return fmt_mean_std(*mean_std(vals)) if vals else "–"


def _alpha_text(values: Sequence[Any]) -> str:
  return ", ".join("kept" if a is None else f"{a:g}" for a in values) or "–"


def setting_label(cell: grid.Cell) -> str:
  """'digits Sym-25%', plus the training variant when it is not plain ERM."""
  label = f"{cell.field('setup')} {cell.field('noise')}"
  return label if cell.variant.label == "ERM" else f"{label} {cell.variant.label}"


def _side_tables(
  config: cfg.Config, cells: Sequence[grid.Cell], records: Mapping[str, dict]
) -> str:
  done = [(c, records[c.key]) for c in cells if c.key in records]
  parts = []

  # Memorisation of the vanilla models, per setting (one vanilla model per seed).
  by_col: dict[str, dict[str, dict]] = {}
  for cell, rec in done:
    by_col.setdefault(setting_label(cell), {}).setdefault(rec["vanilla_key"], rec)
  lines = [
    "| setting | vanilla models | label noise (observed %) | vanilla fits corrupted "
    "labels (%) | vanilla clean test (%) | vanilla train time (s) |",
    "|:---|---:|---:|---:|---:|---:|",
  ]
  for col, runs in by_col.items():
    recs = list(runs.values())
    times = [r["vanilla"].get("train_time_s") for r in recs]
    times = [t for t in times if t is not None and not math.isnan(t)]
    time_text = f"{np.mean(times):.0f}" if times else "–"
    lines.append(
      f"| {col} | {len(recs)} | {_pct([r['noise_rate_observed'] for r in recs])} | "
      f"{_pct([r['vanilla']['fit_noisy'] for r in recs])} | "
      f"{_pct([r['vanilla']['test_accuracy'] for r in recs])} | {time_text} |"
    )
  parts.append(
    "**Memorisation.** Fraction of the training samples with a corrupted label "
    "that the vanilla model predicts as that wrong label (the paper trains 350 "
    "epochs to reach this regime).\n\n" + "\n".join(lines)
  )

  # SAP: α on the noisy validation split (honest) vs on the clean labels (oracle).
  sap = [(c, r) for c, r in done if c.method.name == "sap"]
  if sap:
    groups: dict[tuple[str, str], list[dict]] = {}
    for cell, rec in sap:
      groups.setdefault((cell.method.display, setting_label(cell)), []).append(rec)
    lines = [
      "| SAP | setting | α (noisy val), per seed | α (oracle: clean val), per seed "
      "| test at noisy-val α (%) | test at oracle α (%) | trusted set size | "
      "trusted set mislabelled (%) | SAP time (s) |",
      "|:---|:---|:---|:---|---:|---:|---:|---:|---:|",
    ]
    for (row, col), recs in groups.items():
      has_oracle = any("alpha_oracle" in r for r in recs)
      lines.append(
        f"| {row} | {col} | {_alpha_text([r.get('alpha') for r in recs])} | "
        f"{_alpha_text([r.get('alpha_oracle') for r in recs]) if has_oracle else '–'} | "
        f"{_pct([r['test_accuracy'] for r in recs])} | "
        f"{_pct([r.get('test_accuracy_oracle_alpha') for r in recs])} | "
        f"{int(np.mean([r.get('trusted_size', 0) for r in recs]))} | "
        f"{_pct([r.get('trusted_noise_rate') for r in recs])} | "
        f"{np.mean([r['wall_time_s'] for r in recs]):.1f} |"
      )
    parts.append(
      '**SAP\'s choice of α.** "kept": no α beat the unchanged model on that '
      "split, so it was kept.\n\n" + "\n".join(lines)
    )

  # Cost per method.
  cost: dict[str, list[dict]] = {}
  for cell, rec in done:
    cost.setdefault(cell.method.display, []).append(rec)
  lines = [
    "| method | cells | settings evaluated | wall time per cell (s) |",
    "|:---|---:|---:|---:|",
  ]
  for name, recs in cost.items():
    lines.append(
      f"| {name} | {len(recs)} | {np.mean([r['num_settings'] for r in recs]):g} | "
      f"{np.mean([r['wall_time_s'] for r in recs]):.1f} |"
    )
  parts.append(
    "**Cost.** Hyperparameter settings each method evaluated on the noisy "
    "validation split and its wall time (vanilla training excluded; Retrain is "
    "one full training).\n\n" + "\n".join(lines)
  )
  return "\n\n".join(parts)


def render(config: cfg.Config, cells: Sequence[grid.Cell], records: Mapping[str, dict]) -> str:
  """The whole ``table.md``."""
  table = build_table(config, cells, records)
  seeds = sorted({records[c.key]["seed"] for c in cells if c.key in records})
  title = config.description or config.name
  metric = "Clean test accuracy (%)" if table.metric == "test_accuracy" else table.metric
  done = sum(c.key in records for c in cells)
  head = (
    f"# {title}\n\n"
    f"{metric}, mean ± std over seeds {', '.join(map(str, seeds))} "
    f"({done}/{len(cells)} cells done). Hyperparameters (SAP's α included) are chosen on "
    "the NOISY validation split. **Bold**: best per column among the corrections; "
    "† reference rows, never bold: Retrain trains on the clean labels, and "
    '"(oracle α)" picks α on the clean validation labels (the published code\'s '
    'protocol); "clean trusted set" ranks the trusted set with the clean training labels '
    "(the published code's other oracle).\n\n"
    f"Generated by `python -m experiments.run experiments/configs/{config.name}.py` "
    "from `cells/*.json`; do not edit.\n"
  )
  return head + "\n" + to_markdown(table) + "\n\n" + _side_tables(config, cells, records) + "\n"


def write_tables(
  config: cfg.Config, cells: Sequence[grid.Cell], records: Mapping[str, dict], workdir: Path
) -> list[Path]:
  """Writes ``table.md``, ``table.csv`` and ``cells.csv`` into ``workdir``."""
  workdir = Path(workdir)
  md = workdir / "table.md"
  write_generated(md, render(config, cells, records))

  table = build_table(config, cells, records)
  summary = workdir / "table.csv"
  with generated_text(summary) as f:
    w = csv.writer(f)
    w.writerow(["row", "column", "reference", "n", "mean", "std", "values"])
    for row in table.rows:
      for col in table.columns:
        vals = table.values.get((row, col))
        if not vals:
          continue
        m, s, n = mean_std(vals)
        w.writerow(
          [
            row,
            col,
            int(row in table.reference),
            n,
            f"{m:.4f}",
            f"{s:.4f}",
            ";".join(f"{v:.4f}" for v in vals),
          ]
        )

  raw = workdir / "cells.csv"
  fields = [
    "cell_key",
    "row",
    "column",
    "setup",
    "dataset",
    "model",
    "noise",
    "variant",
    "seed",
    "method",
    "test_accuracy",
    "val_accuracy_noisy",
    "val_accuracy_clean",
    "fit_noisy",
    "vanilla_test_accuracy",
    "vanilla_fit_noisy",
    "alpha",
    "alpha_oracle",
    "test_accuracy_oracle_alpha",
    "trusted_size",
    "trusted_noise_rate",
    "num_settings",
    "wall_time_s",
    "vanilla_train_time_s",
  ]
  with generated_text(raw) as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for cell in cells:
      rec = records.get(cell.key)
      if rec is None:
        continue
      row, col = _row_col(config.table, cell)
      w.writerow(
        {
          **rec,
          "row": row,
          "column": col,
          "vanilla_test_accuracy": rec["vanilla"]["test_accuracy"],
          "vanilla_fit_noisy": rec["vanilla"]["fit_noisy"],
          "vanilla_train_time_s": rec["vanilla"].get("train_time_s"),
        }
      )
  return [md, summary, raw]
