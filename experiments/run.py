"""The experiment runner: one config file → vanilla checkpoints, cell records, tables, plots.

    python -m experiments.run experiments/configs/table1.py
    python -m experiments.run table1 --only-table          # rebuild table/plots from records
    python -m experiments.run table1 --max-cells 5         # run at most 5 unfinished cells
    python -m experiments.run paper_cifar10 --data-root /data/cifar --workdir /scratch/c10

For every cell of the grid (:mod:`experiments.grid`) the runner

1. loads the data (an image folder or a tfds data set lazily, as sources read one
   sample at a time through the feeder, every phase and every method streaming them;
   the in-memory data sets as arrays), then trains the vanilla model on the noisy
   labels, or loads it from
   ``<checkpoint_dir>/<vanilla key>`` (trained once, reused by every method
   and every config with the same run);
2. runs the method (``sap_jax.baselines.get_method(name, **kwargs)``), which
   chooses its hyperparameters on the NOISY validation split;
3. for SAP, also chooses α on the CLEAN validation labels (the published
   code's oracle protocol) and records the test accuracy at that α, the
   accuracy at every α (the α curve) and the trusted set's noise rate;
4. writes ``<workdir>/cells/<cell key>.json`` atomically.

A rerun skips every cell whose record exists, so an interrupted grid resumes
where it stopped. The tables and plots are derived from the records and are
rewritten on every run. A workdir holding records of another config (name) or
config version is refused, and so is an existing folder that holds anything but
the runner's files (no ``config.json``, no records): its table/plot names would
replace the user's files. Every write follows the overwrite rule of
`sap_jax.safe_write` (records and checkpoints are never replaced by anything but
their own kind; vanilla checkpoints and records are never replaced at all).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments import config as cfg
from experiments import grid, oracle
from sap_jax import compilation, safe_write
from sap_jax.jsonio import json_object, write_json
from sap_jax.metrics import split_metrics

__all__ = [
  "RECORD_VERSION",
  "IncompatibleWorkdir",
  "Vanilla",
  "check_workdir",
  "default_checkpoint_dir",
  "default_workdir",
  "load_records",
  "load_vanilla",
  "main",
  "run_cell",
  "run_grid",
  "write_outputs",
]

RECORD_VERSION = 1
"""Bump when the record format changes incompatibly."""

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCRATCH_DIR = RESULTS_DIR / "_work"  # gitignored: checkpoints never get committed

# Index sets of the methods' details whose label-noise rate is recorded.
_INDEX_SETS = {"trusted_indices": "trusted", "retain_indices": "retain", "forget_indices": "forget"}
# Method details left out of records: big arrays, and objects such as SAP's whole result.
_DROP_DETAILS = {
  "pred_probs",
  "folds",
  "flagged",
  "flagged_per_setting",
  "history",
  "sap_result",
  *_INDEX_SETS,
}


class IncompatibleWorkdir(RuntimeError):
  """The workdir holds records of another config or config version, or is not a workdir."""


def _has_keys(*keys: str) -> Callable[[Path], bool]:
  def recognise(path: Path) -> bool:
    doc = json_object(path)
    return doc is not None and all(k in doc for k in keys)

  return recognise


CONFIG_KIND = safe_write.Kind("experiment config record", _has_keys("name", "version"))
"""``<workdir>/config.json``: which config (name, version) the workdir's records belong to."""
RECORD_KIND = safe_write.Kind("experiment cell record", _has_keys("record_version", "cell_key"))
"""``<workdir>/cells/<key>.json``."""
# What the runner itself puts in a workdir (besides the files the tables and plots write).
_RUNNER_FILES = {"config.json", "cells", "checkpoints", "run.log"}


def default_workdir(config: cfg.Config) -> Path:
  """``experiments/results/<config name>``."""
  return RESULTS_DIR / config.name


def default_checkpoint_dir(workdir: Path | None) -> Path:
  """``experiments/results/_work/checkpoints`` for the committed results
  folders (gitignored), else ``<workdir>/checkpoints``."""
  if workdir is None or Path(workdir).resolve().parent == RESULTS_DIR:
    return SCRATCH_DIR / "checkpoints"
  return Path(workdir) / "checkpoints"


# ---------------------------------------------------------------------------
# Method details in records.
# ---------------------------------------------------------------------------


def _small(obj: Any, limit: int = 64) -> Any:
  """JSON-ready copy of method details, without big arrays."""
  if isinstance(obj, Mapping):
    return {str(k): _small(v, limit) for k, v in obj.items() if not _is_big(v, limit)}
  if isinstance(obj, (list, tuple)):
    return [_small(v, limit) for v in obj]
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray) or type(obj).__name__ == "ArrayImpl":
    return np.asarray(obj).tolist()
  if obj is None or isinstance(obj, (bool, int, float, str)):
    return obj
  return repr(obj)


def _is_big(value: Any, limit: int) -> bool:
  return hasattr(value, "shape") and int(np.size(value)) > limit


# ---------------------------------------------------------------------------
# Workdir and records.
# ---------------------------------------------------------------------------


def check_workdir(config: cfg.Config, workdir: Path, *, write: bool = True) -> None:
  """Refuses a workdir of another config name/version; records this config.

  Raises:
    IncompatibleWorkdir: with the way out in the message.
  """
  workdir = Path(workdir)
  meta_path = workdir / "config.json"
  found = None
  if workdir.is_dir() and not meta_path.exists() and not any((workdir / "cells").glob("*.json")):
    foreign = sorted(set(os.listdir(workdir)) - _RUNNER_FILES)
    if foreign:
      raise IncompatibleWorkdir(
        f"{workdir} is not an experiment workdir: it holds {', '.join(foreign[:5])}"
        f"{', …' if len(foreign) > 5 else ''} and no config.json or records, and the tables "
        "and plots would be written over files of the same names. Pass an empty or new "
        "--workdir."
      )
  if meta_path.is_file():
    found = json.loads(meta_path.read_text(encoding="utf-8"))
    found = (found.get("name"), found.get("version"), found.get("record_version"))
  else:
    first = next(iter(sorted((workdir / "cells").glob("*.json"))), None)
    if first is not None:
      rec = json.loads(first.read_text(encoding="utf-8"))
      found = (rec.get("config_name"), rec.get("config_version"), rec.get("record_version"))
  want = (config.name, config.version, RECORD_VERSION)
  if found is not None and tuple(found) != want:
    raise IncompatibleWorkdir(
      f"{workdir} holds records of config {found[0]!r} version {found[1]} (record format "
      f"{found[2]}), not {want[0]!r} version {want[1]} (format {want[2]}). Its records "
      "would be mixed with incompatible ones: pass another --workdir, or delete "
      f"{workdir / 'cells'} to start over."
    )
  if write:
    write_json(
      meta_path,
      {
        "name": config.name,
        "version": config.version,
        "record_version": RECORD_VERSION,
        "config": cfg.to_dict(config),
      },
      CONFIG_KIND,
      overwrite=True,
    )


def record_path(workdir: Path, key: str) -> Path:
  return Path(workdir) / "cells" / f"{key}.json"


def load_records(workdir: Path, cells: Sequence[grid.Cell]) -> dict[str, dict]:
  """The records of ``cells`` that exist, by cell key."""
  out = {}
  for cell in cells:
    path = record_path(workdir, cell.key)
    if path.is_file():
      out[cell.key] = json.loads(path.read_text(encoding="utf-8"))
  return out


# ---------------------------------------------------------------------------
# Vanilla runs.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Vanilla:
  """A vanilla run in memory: data, model and the trained variables."""

  key: str
  spec: Any
  splits: Any
  model: Any
  apply_fn: Callable
  variables: dict
  metrics: dict
  train_time_s: float
  trained_now: bool


def load_vanilla(
  spec,
  key: str,
  checkpoint_dir: Path,
  *,
  train_progress: bool = False,
  echo: Callable[[str], None] = print,
) -> Vanilla:
  """Loads ``<checkpoint_dir>/<key>``, or trains the model and saves it there."""
  from sap_jax import checkpoint, init_from, provenance, train
  from sap_jax.spec import RunSpec, build_model, build_splits, load_data

  splits = build_splits(spec, stream=True)  # image folders and tfds: lazy sources
  model = build_model(spec, splits.num_classes)
  apply_fn = train.eval_apply_fn(model)
  path = Path(checkpoint_dir) / key
  if path.exists():
    variables, meta = checkpoint.load_checkpoint(path)
    stored = RunSpec.from_dict(meta["spec"])
    if grid.vanilla_key(stored) != key:
      raise ValueError(
        f"Checkpoint {path} holds run {grid.vanilla_key(stored)}, not {key}; remove it."
      )
    train_time = float(meta.get("metrics", {}).get("train_time_s", float("nan")))
    trained_now = False
  else:
    echo(
      f"train {key}: {spec.model} on {spec.dataset} ({len(splits.x_train)} samples, "
      f"{int(splits.noise_mask.sum())} corrupted), {spec.train.epochs} epochs"
    )
    x_val, y_val = splits.labelled("val")
    result = train.train_model(
      model,
      *splits.labelled("train"),
      spec.train,
      x_val=x_val,
      y_val=y_val,
      progress=train_progress,
      dataset=spec.dataset,
      init_from=spec.init_from,
    )
    if result.pretrained is not None:
      echo(init_from.describe(result.pretrained, spec.init_from))
    variables, train_time, trained_now = result.variables, result.train_time_s, True
  metrics = split_metrics(apply_fn, variables, splits)
  if trained_now:
    try:
      checkpoint.save_checkpoint(
        path,
        variables,
        {
          "kind": "trained",
          "vanilla_key": key,
          "spec": spec.to_dict(),
          "data": {
            "dataset": spec.dataset,
            "root": spec.data_root,
            "options": dict(spec.data_options),
            "fingerprint": provenance.data_fingerprint(load_data(spec, stream=True)),
          },
          "metrics": {**metrics, "train_time_s": train_time},
          "history": result.history,
          **(
            {}
            if result.pretrained is None
            else {"pretrained": init_from.record(result.pretrained, spec.init_from)}
          ),
        },
      )
    except FileExistsError:
      # Another runner (e.g. a second config sharing this run) saved it first;
      # its run is the same deterministic training, so keep going.
      echo(f"note: {path} was saved by another process meanwhile; kept that one.")
  return Vanilla(key, spec, splits, model, apply_fn, variables, metrics, train_time, trained_now)


# ---------------------------------------------------------------------------
# Cells.
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
  """What a record's numbers depend on beyond the code: package versions, the CPU and
  its XLA flags, the cores in use and the git commit (training on noisy labels turns
  float-level differences between machines into points of accuracy)."""
  import platform

  import jax

  def version(name: str) -> str | None:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return None

  cpu, simd = None, None
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = f.read().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info if ln.startswith("model name")), None)
    flags = next((ln.split(":", 1)[1].split() for ln in info if ln.startswith("flags")), [])
    simd = sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
  except OSError:
    pass
  try:
    commit = (
      subprocess.run(
        ["git", "rev-parse", "HEAD"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        timeout=10,
      ).stdout.strip()
      or None
    )
  except (OSError, subprocess.SubprocessError):
    commit = None
  return {
    "python": platform.python_version(),
    "packages": {
      n: version(n)
      for n in ("jax", "jaxlib", "flax", "optax", "numpy", "scikit-learn", "cleanlab", "mnist1d")
    },
    "platform": jax.default_backend(),
    "cpu": cpu,
    "cpu_simd": simd,
    "cpu_count": os.cpu_count(),
    "cores_in_use": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "git_commit": commit,
  }


def run_cell(
  config: cfg.Config, cell: grid.Cell, vanilla: Vanilla, *, checkpoint_dir: Path | None = None
) -> dict[str, Any]:
  """Runs one method on one vanilla model and returns the cell record."""
  from sap_jax import baselines, checkpoint

  splits = vanilla.splits
  method = baselines.get_method(cell.method.name, **dict(cell.method.kwargs))
  task = baselines.CorrectionTask.from_splits(
    vanilla.model, vanilla.variables, splits, vanilla.spec.train, seed=cell.seed
  )
  result = method.run(task)
  metrics = split_metrics(vanilla.apply_fn, result.variables, splits)
  record: dict[str, Any] = {
    "record_version": RECORD_VERSION,
    "config_name": config.name,
    "config_version": config.version,
    "cell_key": cell.key,
    "vanilla_key": cell.vanilla_key,
    "setup": cell.field("setup"),
    "dataset": cell.setup.dataset,
    "model": cell.setup.model,
    "model_kwargs": dict(cell.setup.model_kwargs),
    "noise": cell.noise,
    "variant": cell.variant.label,
    "seed": cell.seed,
    "method": cell.method.display,
    "method_name": cell.method.name,
    "method_kwargs": dict(cell.method.kwargs),
    "chosen": _small(result.chosen),
    "num_settings": int(result.num_settings),
    "wall_time_s": float(result.wall_time_s),
    **metrics,
    "vanilla": {**vanilla.metrics, "train_time_s": vanilla.train_time_s},
    "n_train": int(len(splits.x_train)),
    "n_val": int(len(splits.x_val)),
    "n_test": int(len(splits.x_test)),
    "noise_rate_observed": float(splits.noise_mask.mean()),
    "train_config": vanilla.spec.train.to_dict(),
    "details": _small({k: v for k, v in result.details.items() if k not in _DROP_DETAILS}),
    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    "environment": environment(),
  }
  for key, name in _INDEX_SETS.items():
    if key in result.details:
      idx = np.asarray(result.details[key], np.int64)
      record[f"{name}_size"] = int(idx.size)
      record[f"{name}_noise_rate"] = float(splits.noise_mask[idx].mean()) if idx.size else None
  if cell.method.name == "sap":
    record.update(
      oracle.sap_extras(
        result,
        vanilla.apply_fn,
        vanilla.variables,
        splits,
        oracle=config.oracle,
        alpha_curve=config.alpha_curve,
        spectra=config.record_spectra,
        batch_size=max(int(method.hparams["batch_size"]), 512),
      )
    )
  if checkpoint_dir is not None and cell.method.display in config.save_variables:
    checkpoint.save_checkpoint(
      Path(checkpoint_dir) / "corrected" / cell.key,
      result.variables,
      {
        "kind": cell.method.name,
        "cell_key": cell.key,
        "vanilla_key": cell.vanilla_key,
        "spec": vanilla.spec.to_dict(),
        "chosen": record["chosen"],
      },
      overwrite=True,
    )
  return record


def _log_line(i: int, n: int, rec: dict) -> str:
  pct = lambda v: "  -  " if v is None else f"{100 * v:5.1f}"  # noqa: E731
  extra = ""
  if rec["method_name"] == "sap":
    alpha = rec.get("alpha")
    extra = f" α={alpha:g}" if alpha else " α=kept"
    if "alpha_oracle" in rec:
      oa = rec["alpha_oracle"]
      extra += (
        f" (oracle {oa:g}: {pct(rec['test_accuracy_oracle_alpha'])})" if oa else " (oracle kept)"
      )
  return (
    f"[{i}/{n}] {rec['setup']} {rec['noise']} {rec['variant']} s{rec['seed']} "
    f"{rec['method']:<14} test {pct(rec['test_accuracy'])} (vanilla "
    f"{pct(rec['vanilla']['test_accuracy'])}) fit {pct(rec['fit_noisy'])} "
    f"{rec['wall_time_s']:6.1f}s{extra}"
  )


@dataclasses.dataclass
class RunSummary:
  """What :func:`run_grid` did."""

  total: int
  already_done: int
  ran: int
  failed: list[str]
  remaining: int
  trained: int
  wall_time_s: float


def run_grid(
  config: cfg.Config,
  workdir: Path | str | None = None,
  *,
  checkpoint_dir: Path | str | None = None,
  max_cells: int | None = None,
  progress: bool = True,
  train_progress: bool = False,
  fail_fast: bool = False,
  echo: Callable[[str], None] | None = None,
  shard: tuple[int, int] | None = None,
) -> RunSummary:
  """Runs every unfinished cell of ``config``.

  Args:
    config: the experiment.
    workdir: where ``cells/*.json`` go (default ``experiments/results/<name>``).
    checkpoint_dir: vanilla checkpoints (default :func:`default_checkpoint_dir`).
    max_cells: stop after this many cells (None: all).
    progress: a tqdm bar over cells.
    train_progress: a tqdm bar over epochs while training.
    fail_fast: re-raise a failing cell's error instead of logging it and going on
      (a failed cell writes no record, so the next run retries it).
    echo: where the one-line-per-cell log goes (default: tqdm.write).
    shard: ``(i, n)``: run only the cells of every n-th vanilla model, starting at the
      i-th (0-based, grid order), so that n runners on one workdir share the grid
      without training a vanilla model twice; None runs every cell.

  Returns:
    A :class:`RunSummary`.
  """
  from tqdm.auto import tqdm

  start = time.perf_counter()
  workdir = Path(workdir) if workdir is not None else default_workdir(config)
  checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(workdir)
  cells = grid.expand(config)
  check_workdir(config, workdir)
  todo = [c for c in cells if not record_path(workdir, c.key).is_file()]
  if shard is not None:
    index, count = shard
    if not (count >= 1 and 0 <= index < count):
      raise ValueError(f"shard {index}/{count}: need 0 ≤ i < n, e.g. --shard 0/2 and --shard 1/2.")
    order = {key: k for k, key in enumerate(dict.fromkeys(c.vanilla_key for c in cells))}
    cells = [c for c in cells if order[c.vanilla_key] % count == index]
    todo = [c for c in todo if order[c.vanilla_key] % count == index]
  done_before = len(cells) - len(todo)
  if max_cells is not None:
    todo = todo[: max(0, int(max_cells))]
  # disable=None: no bar when stderr is not a terminal (nohup logs get the
  # one-line-per-cell log, which carries the count and an ETA).
  bar = tqdm(
    total=len(todo),
    disable=None if progress else True,
    desc=config.name,
    unit="cell",
    mininterval=2.0,
    file=sys.stderr,
  )
  say = echo or bar.write
  say(
    f"{config.name}: {len(cells)} cells, {done_before} done, running {len(todo)}; "
    f"records in {workdir / 'cells'}, checkpoints in {checkpoint_dir}"
  )
  ran, failed, trained, i = 0, [], 0, done_before
  log_path = workdir / "run.log"
  for vkey, group in grid.groups(todo):
    try:
      vanilla = load_vanilla(
        group[0].spec, vkey, checkpoint_dir, train_progress=train_progress, echo=say
      )
    except Exception:
      if fail_fast:
        raise
      say(f"FAILED vanilla {vkey}:\n{traceback.format_exc()}")
      failed += [c.key for c in group]
      bar.update(len(group))
      continue
    trained += vanilla.trained_now
    for cell in group:
      i += 1
      try:
        rec = run_cell(config, cell, vanilla, checkpoint_dir=checkpoint_dir)
      except Exception:
        if fail_fast:
          raise
        say(f"FAILED {cell.key}:\n{traceback.format_exc()}")
        failed.append(cell.key)
        bar.update(1)
        continue
      path = record_path(workdir, cell.key)
      try:
        write_json(path, rec, RECORD_KIND)
      except FileExistsError:
        if not RECORD_KIND.recognise(path):
          raise
        # Another runner on this workdir (a shard sharing the cell) wrote it first.
        say(f"note: {path} was written by another process meanwhile; kept that one.")
      ran += 1
      elapsed = time.perf_counter() - start
      eta = elapsed / ran * (len(todo) - ran - len(failed))
      line = f"{_log_line(i, len(cells), rec)}  [{elapsed / 60:.1f} min, eta {eta / 60:.1f} min]"
      say(line)
      with open(log_path, "a", encoding="utf-8") as f:
        f.write(time.strftime("%H:%M:%S ") + line + "\n")
      bar.update(1)
  bar.close()
  remaining = sum(not record_path(workdir, c.key).is_file() for c in cells)
  return RunSummary(
    len(cells), done_before, ran, failed, remaining, trained, time.perf_counter() - start
  )


# ---------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------


def write_outputs(
  config: cfg.Config,
  workdir: Path | str | None = None,
  *,
  checkpoint_dir: Path | str | None = None,
  echo: Callable[[str], None] = print,
) -> list[Path]:
  """Rewrites ``table.md``, ``table.csv``, ``cells.csv`` and the plots from the records."""
  from experiments import plots, tables

  workdir = Path(workdir) if workdir is not None else default_workdir(config)
  checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else default_checkpoint_dir(workdir)
  cells = grid.expand(config)
  records = load_records(workdir, cells)
  on_disk = len(list((workdir / "cells").glob("*.json")))
  if on_disk > len(records):
    echo(
      f"note: {on_disk - len(records)} record(s) in {workdir / 'cells'} are not cells of "
      "the current grid; they are left out of the tables."
    )
  if not records:
    echo(f"no records in {workdir / 'cells'} yet; nothing to tabulate.")
    return []
  written = tables.write_tables(config, cells, records, workdir)
  for name in config.plots:
    try:
      written += plots.draw(name, config, cells, records, workdir, checkpoint_dir)
    except Exception:
      echo(f"plot {name} failed:\n{traceback.format_exc()}")
  return written


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m experiments.run",
    description="Run an experiment grid from a config file (vanilla checkpoints are "
    "trained once and reused; finished cells are skipped).",
  )
  p.add_argument("config", help="config file (experiments/configs/table1.py) or its name (table1)")
  p.add_argument(
    "--workdir", default=None, help="results folder (default experiments/results/<config name>)"
  )
  p.add_argument(
    "--checkpoint-dir",
    default=None,
    help="vanilla checkpoints (default experiments/results/_work/checkpoints for "
    "the committed results folders, else <workdir>/checkpoints)",
  )
  p.add_argument("--data-root", default=None, help="sets data_root of every setup (CIFAR, folders)")
  p.add_argument(
    "--set",
    dest="overrides",
    action="append",
    default=[],
    metavar="KEY=VALUE",
    help="override a config field, e.g. train.epochs=1, seeds=[0], "
    "setup.data_options.num_samples=200, method.sap.n_trusted=100",
  )
  p.add_argument("--only-table", action="store_true", help="only rebuild tables/plots from records")
  p.add_argument("--max-cells", type=int, default=None, help="run at most N unfinished cells")
  p.add_argument("--train-progress", action="store_true", help="show a bar over training epochs")
  p.add_argument("--no-progress", action="store_true", help="no bar over cells")
  p.add_argument("--fail-fast", action="store_true", help="stop at the first failing cell")
  p.add_argument(
    "--shard",
    type=_shard,
    default=None,
    metavar="I/N",
    help="run only the cells of every N-th vanilla model from the I-th (0-based), "
    "to share one workdir between N runners",
  )
  p.add_argument(
    "--compilation-cache",
    default=None,
    metavar="DIR|off",
    help="JAX persistent compilation cache folder shared by runs; 'off' disables it "
    f"(default: ${compilation.ENV_VAR}, else {compilation.default_cache_dir()})",
  )
  return p


def _shard(text: str) -> tuple[int, int]:
  try:
    i, n = (int(v) for v in text.split("/"))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
  if not (n >= 1 and 0 <= i < n):
    raise argparse.ArgumentTypeError(f"need 0 ≤ I < N, got {text!r}")
  return i, n


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  overrides = list(args.overrides)
  if args.data_root is not None:
    overrides.append(f"setup.data_root={args.data_root}")
  try:
    config, _ = cfg.load_config(args.config)
    config = cfg.apply_overrides(config, overrides)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  workdir = Path(args.workdir) if args.workdir else default_workdir(config)
  try:
    if args.only_table:
      check_workdir(config, workdir, write=False)
    else:
      compilation.enable_persistent_cache(args.compilation_cache)
      summary = run_grid(
        config,
        workdir,
        checkpoint_dir=args.checkpoint_dir,
        max_cells=args.max_cells,
        progress=not args.no_progress,
        train_progress=args.train_progress,
        fail_fast=args.fail_fast,
        shard=args.shard,
      )
      print(
        f"{config.name}: ran {summary.ran} cell(s) ({summary.trained} vanilla model(s) "
        f"trained) in {summary.wall_time_s:.0f} s; {summary.already_done} were done before, "
        f"{summary.remaining} remain, {len(summary.failed)} failed."
      )
  except IncompatibleWorkdir as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for path in write_outputs(config, workdir, checkpoint_dir=args.checkpoint_dir):
    print(f"wrote {path}")
  return 1 if (not args.only_table and summary.failed) else 0


if __name__ == "__main__":
  sys.exit(main())
