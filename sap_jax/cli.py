"""`sap-jax` command line: train | evaluate | correct | demo.

The edge of the library: argument parsing, files and printing live here; every
step calls the public functions of the package, and every default and choice
comes from it (`TrainConfig`'s fields, `RunSpec`'s, `run_sap`'s keyword defaults,
`DEFAULT_ALPHAS`, `trusted.SCORES`). `main` turns on JAX's persistent compilation cache
(`sap_jax.compilation`; global option ``--compilation-cache DIR|off``), so a later command
in a new process loads the compiled programs of an earlier one instead of compiling them.

What a user sees:

* every output path of a command is checked against the overwrite rule
  (`sap_jax.safe_write`) before any work: without ``--overwrite`` nothing existing is
  touched; with it only an existing sap_jax checkpoint / report is replaced; never the
  input checkpoint, anything in it or containing it;
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
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

import sap_jax
import sap_jax.nnx as sap_nnx
from sap_jax import (
  DEFAULT_ALPHAS,
  checkpoint,
  compilation,
  data,
  jsonio,
  models,
  multihost,
  provenance,
  run_sap,
  safe_write,
  train,
  trusted,
)
from sap_jax import sharding as shd
from sap_jax.metrics import split_metrics
from sap_jax.models.nnx_zoo import NNX_MODELS
from sap_jax.spec import APIS, RunSpec, build_model, build_splits, load_data
from sap_jax.tuning import tuning_report

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


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


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
  return value


def _kv(text: str) -> tuple[str, Any]:
  """``KEY=VALUE``, VALUE read as JSON when it is JSON (``3``, ``[1,2]``, ``true``), else text."""
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"expected KEY=VALUE such as width=64, got {text!r}")
  key, value = text.split("=", 1)
  if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", key.strip()):
    raise argparse.ArgumentTypeError(
      f"expected KEY=VALUE with KEY a name such as width, got {text!r}"
    )
  key = key.strip()
  try:
    parsed = json.loads(value)
  except json.JSONDecodeError:
    parsed = value
  return key.replace("-", "_"), parsed


def _print_metrics(name: str, m: dict[str, float | None]) -> None:
  fit = m.get("fit_noisy")
  fit = "" if fit is None else f", fits {100 * fit:.1f}% of the corrupted labels"
  print(f"{name}: clean test accuracy {100 * m['test_accuracy']:.2f}%{fit}")


# ------------------------------------------------------------------ progress


class _Progress:
  """Progress on stderr: a live bar on a terminal, one line per update in a file or a
  pipe (no carriage returns), nothing when quiet."""

  def __init__(self, quiet: bool, stream=None):
    self.stream = stream if stream is not None else sys.stderr
    self.quiet = quiet
    isatty = getattr(self.stream, "isatty", None)
    self.live = not quiet and callable(isatty) and bool(isatty())
    self._bar = None
    self._started: dict[str, float] = {}

  def say(self, text: str) -> None:
    if not self.quiet:
      print(text, file=self.stream, flush=True)

  def train_options(self, epochs: int) -> dict[str, Any]:
    """`train.train_model`'s ``progress``/``log_fn``: its tqdm bar on a terminal, else
    one line every ``epochs // 20`` epochs (and the last)."""
    if self.quiet or self.live:
      return {"progress": self.live, "log_fn": None}
    every = max(1, epochs // 20)

    def line(entry: dict[str, float]) -> None:
      epoch = int(entry["epoch"])
      if epoch % every and epoch != epochs:
        return
      val = f", val acc {entry['val_accuracy']:.3f}" if "val_accuracy" in entry else ""
      self.say(
        f"train epoch {epoch}/{epochs}: loss {entry['loss']:.4f}, "
        f"train acc {entry['train_accuracy']:.3f}{val}"
      )

    return {"progress": False, "log_fn": line}

  def phase(self, name: str, done: int, total: int) -> None:
    """`run_sap`'s ``progress`` callback: a line per phase, a bar over the α values."""
    if self.quiet:
      return
    if name == "α sweep":
      self._sweep(done, total)
    elif done == 0:
      self._started[name] = time.perf_counter()
      self.say(f"correct: {name} …")
    else:
      seconds = time.perf_counter() - self._started.get(name, time.perf_counter())
      self.say(f"correct: {name} done ({seconds:.1f} s)")

  def _sweep(self, done: int, total: int) -> None:
    if not self.live:
      self.say(f"correct: α sweep {done}/{total} α values scored")
      return
    if self._bar is None:
      from tqdm.auto import tqdm

      self._bar = tqdm(total=total, desc="correct: α sweep", unit="α", file=self.stream)
    self._bar.update(done - self._bar.n)
    if done >= total:
      self._bar.close()
      self._bar = None


# ------------------------------------------------------------------ errors


class UserError(ValueError):
  """A mistake in the command's arguments or files; ``main`` prints it as one line."""


def _one_line(text: str) -> str:
  return re.sub(r"\s+", " ", str(text)).strip()


def _error_text(e: BaseException) -> str | None:
  """The one ``error:`` line for a user-facing exception, or None for a bug."""
  if isinstance(e, OSError) and e.errno is not None:  # raised by the OS, not by sap_jax
    where = f" {e.filename}" if e.filename else ""
    return f"{e.strerror or e}:{where}; check the path and its permissions."
  if isinstance(e, (ValueError, OSError)):
    return _one_line(e)
  if isinstance(e, FloatingPointError):
    return _one_line(e)
  if isinstance(e, MemoryError):
    return "out of memory; lower --batch-size (or use a smaller model or data set)."
  if type(e).__name__ == "XlaRuntimeError" and "RESOURCE_EXHAUSTED" in str(e):
    return "out of device memory; lower --batch-size (or use a smaller model)."
  return None


# ------------------------------------------------------------------ runs and data


def _data_record(spec: RunSpec, fingerprint: dict[str, str]) -> dict[str, Any]:
  """What a checkpoint records of its data: the absolute root and the content fingerprint."""
  return {
    "dataset": spec.dataset,
    "root": spec.data_root,
    "options": dict(spec.data_options),
    "fingerprint": fingerprint,
  }


def _load_data(spec: RunSpec, source: str | None = None, given: bool = False) -> data.Dataset:
  """`load_data`, with the way out when the data are not where the run says."""
  try:
    return load_data(spec)
  except FileNotFoundError as e:
    if source is None:
      raise
    if given:
      raise UserError(f"no data at --data-root {spec.data_root}: {_one_line(e)}") from None
    raise UserError(
      f"the data {source} was trained on are not at {spec.data_root}, where it recorded them "
      f"({_one_line(e)}); if they moved, pass --data-root NEW_PATH."
    ) from None


def _checked_nnx_model(spec: RunSpec, splits: data.NoisySplits, sample: Any, options: str):
  """The run's NNX twin, built (initialised) and traced (shapes only) on one sample."""
  import jax

  shape = tuple(splits.x_train.shape[1:])
  try:
    model = build_model(spec, splits.num_classes, shape)
  except TypeError as e:
    raise UserError(f"{_one_line(e)}; fix the --model-kw options.") from None
  except ValueError as e:
    raise UserError(
      f"NNX model {spec.model!r} ({options}) cannot be built for inputs of shape {shape}: "
      f"{_one_line(e)[:300]}; check the --model-kw values."
    ) from None
  try:
    jax.eval_shape(functools.partial(*sap_nnx.functional(model)), sample)
  except (TypeError, ValueError) as e:
    first = _one_line(str(e).split("\n")[0])[:300]
    raise UserError(
      f"NNX model {spec.model!r} ({options}) cannot run on inputs of shape {shape}: "
      f"{first}; check the --model-kw values."
    ) from None
  return model


def _checked_model(spec: RunSpec, splits: data.NoisySplits):
  """The run's model, built and traced (shapes only) on one sample before any work.

  Returns ``(model, variable shapes)``; an NNX model (``spec.api == "nnx"``) is built
  initialised, and its shapes are None (loading checks the fit, `_load_nnx_model`).
  """
  import jax

  options = ", ".join(f"{k}={v!r}" for k, v in spec.model_kwargs.items()) or "no --model-kw"
  sample = jax.ShapeDtypeStruct((1, *splits.x_train.shape[1:]), splits.x_train.dtype)
  key = jax.random.key(0)
  if spec.api == "nnx":
    return _checked_nnx_model(spec, splits, sample, options), None
  try:
    model = build_model(spec, splits.num_classes)
  except TypeError as e:
    raise UserError(f"{_one_line(e)}; fix the --model-kw options.") from None
  try:
    shapes = jax.eval_shape(
      lambda x: model.init({"params": key, "dropout": key}, x, train=False), sample
    )
  except (TypeError, ValueError) as e:
    first = _one_line(str(e).split("\n")[0])[:300]
    raise UserError(
      f"model {spec.model!r} ({options}) cannot be built for inputs of shape "
      f"{tuple(splits.x_train.shape[1:])}: {first}; check the --model-kw values."
    ) from None
  return model, shapes


def _check_fit(path: str, variables: Any, shapes: Any) -> None:
  """Refuses arrays that do not fit the model the checkpoint's metadata describes."""
  import jax

  def flat(tree) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): tuple(np.shape(v)) for k, v in leaves}

  saved, wanted = flat(variables), flat(dict(shapes))
  if saved != wanted:
    diff = sorted(set(saved) ^ set(wanted)) or sorted(k for k in saved if saved[k] != wanted[k])
    name = diff[0]
    raise UserError(
      f"the arrays of {path} do not fit the model its metadata describes ({name}: saved "
      f"{saved.get(name)}, model {wanted.get(name)}); its metadata.json was edited or "
      "written by another sap_jax version: restore it from a copy."
    )


def _load_nnx_model(path: str, model: Any, variables: Any) -> Any:
  """The NNX model holding a checkpoint's arrays; refuses arrays that do not fit it."""
  try:
    return sap_nnx.with_variables(model, variables)
  except ValueError as e:
    raise UserError(
      f"the arrays of {path} do not fit the NNX model its metadata describes "
      f"({_one_line(e)}); its metadata.json was edited or written by another sap_jax "
      "version: restore it from a copy."
    ) from None


class _Run(NamedTuple):
  """A loaded checkpoint: ``apply_fn``/``variables`` the eval-mode forward pair of the
  SAP core; ``model`` the NNX model (``spec.api == "nnx"``), else None."""

  variables: dict[str, Any]
  meta: dict[str, Any]
  spec: RunSpec
  splits: data.NoisySplits
  apply_fn: Callable
  data: dict[str, Any]
  data_changed: list[str]
  model: Any = None


def _load_run(
  path: str,
  *,
  data_root: str | None = None,
  allow_changed_data: bool = False,
  say=print,
  mesh: Any = None,
) -> _Run:
  """A checkpoint, its run spec, its data (checked against its fingerprint) and model;
  with a ``mesh`` the arrays come back replicated on it."""
  sharding = None if mesh is None else shd.replicated(mesh)
  variables, meta = checkpoint.load_checkpoint(path, sharding=sharding)
  if "spec" not in meta:
    raise UserError(
      f"{path} has no run spec in its metadata; it was not written by "
      "`sap-jax train` or `sap-jax correct`."
    )
  try:
    spec = RunSpec.from_dict(meta["spec"])
  except (TypeError, ValueError, KeyError) as e:
    raise UserError(
      f"the run spec in {path} cannot be read ({_one_line(e)}); it was written by another "
      "sap_jax version."
    ) from None
  if data_root is not None:
    spec = dataclasses.replace(spec, data_root=data_root)
  dataset = _load_data(spec, source=str(path), given=data_root is not None)
  found = provenance.data_fingerprint(dataset)
  recorded = meta["data"].get("fingerprint") if isinstance(meta.get("data"), dict) else None
  changed: list[str] = []
  if not isinstance(recorded, dict):
    say(
      f"note: {path} records no fingerprint of its data (saved by an older sap_jax); "
      "the data are used unchecked."
    )
  else:
    changed = provenance.changed_arrays(recorded, found)
    if changed:
      where = f"data at {spec.data_root}" if spec.data_root else f"{spec.dataset} data"
      what = provenance.describe_changes(changed)
      if not allow_changed_data:
        raise provenance.DataChanged(
          f"the {where} differ from those {path} was trained on: {what} changed. Point "
          "--data-root at the data it was trained on, or pass --allow-changed-data to "
          "use these anyway."
        )
      say(f"warning: the {where} differ from the training data ({what}); used anyway.")
  splits = build_splits(spec)
  model, shapes = _checked_model(spec, splits)
  record = _data_record(spec, found)
  if spec.api == "nnx":
    model = _load_nnx_model(path, model, variables)
    apply_fn, variables = sap_nnx.functional(model)
    return _Run(variables, meta, spec, splits, apply_fn, record, changed, model)
  _check_fit(path, variables, shapes)
  return _Run(variables, meta, spec, splits, train.eval_apply_fn(model), record, changed)


def _stderr(text: str) -> None:
  """A note on stderr (from process 0 only, with several processes)."""
  if _first_process():
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------- many devices


def _mesh_size(text: str) -> int:
  """``data=N``: the data axis's device count."""
  key, _, value = text.partition("=")
  try:
    size = int(value)
  except ValueError:
    size = 0
  if key.strip() != shd.DATA_AXIS or size < 1:
    raise argparse.ArgumentTypeError(
      f"expected {shd.DATA_AXIS}=N with N the number of devices, such as data=8; got {text!r}"
    )
  return size


def _add_device_args(p: argparse.ArgumentParser) -> None:
  g = p.add_argument_group(
    "many devices and hosts (a data-parallel mesh; jax.distributed on every host)"
  )
  g.add_argument(
    "--data-parallel",
    action="store_true",
    help="shard every split over all devices (of every process): data-parallel training, "
    "SAP and evaluation where the samples are; each split is cut to a multiple of the "
    "device count",
  )
  g.add_argument(
    "--mesh",
    type=_mesh_size,
    default=None,
    metavar="data=N",
    help="the mesh shape: N devices on the data axis, which must be every device; implies "
    "--data-parallel",
  )
  g.add_argument(
    "--distributed",
    action="store_true",
    help="run the same command on every host: jax.distributed.initialize() joins the "
    "processes (auto-detected on Cloud TPU, SLURM and Open MPI, or from --coordinator, "
    "--num-processes and --process-id); only process 0 prints and writes reports; implies "
    "--data-parallel",
  )
  g.add_argument(
    "--coordinator",
    default=None,
    metavar="HOST:PORT",
    help="process 0's address and a free port, with --num-processes and --process-id, where "
    "JAX does not detect the cluster (e.g. 127.0.0.1:1234 on one machine); implies "
    "--distributed",
  )
  g.add_argument("--num-processes", type=_positive_int, default=None, help="with --coordinator")
  g.add_argument("--process-id", type=int, default=None, help="with --coordinator: 0 … N-1")


def _start_devices(args) -> None:
  """Joins the processes (``--distributed``) and makes the mesh (``args.device_mesh``,
  None without ``--data-parallel``), refusing inconsistent flags before any work."""
  args.device_mesh = None
  if not hasattr(args, "data_parallel"):
    return
  given = {
    "--coordinator": args.coordinator,
    "--num-processes": args.num_processes,
    "--process-id": args.process_id,
  }
  if any(v is not None for v in given.values()):
    missing = [k for k, v in given.items() if v is None]
    if missing:
      raise UserError(
        f"--coordinator, --num-processes and --process-id go together: {', '.join(missing)} "
        "missing (or pass --distributed alone where JAX detects the cluster)."
      )
    if not 0 <= args.process_id < args.num_processes:
      raise UserError(
        f"--process-id {args.process_id} is not one of the {args.num_processes} processes; "
        f"pass 0 … {args.num_processes - 1}."
      )
    args.distributed = True
  import jax

  if args.distributed and not jax.distributed.is_initialized():  # else: joined by the caller
    try:
      jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    except (RuntimeError, ValueError) as e:
      raise UserError(
        f"jax.distributed.initialize failed ({_one_line(e)[:300]}); where JAX does not "
        "detect the cluster, pass --coordinator HOST:PORT --num-processes N --process-id I."
      ) from None
  if args.distributed:  # the same command on every process, before any work
    ignored = {"process_id", "func", "written", "device_mesh"}
    multihost.check_same_across_processes(
      {"--" + k.replace("_", "-"): v for k, v in vars(args).items() if k not in ignored},
      f"sap-jax {args.command}",
    )
  if not (args.data_parallel or args.distributed or args.mesh is not None):
    return
  devices = jax.device_count()
  if args.mesh is not None and args.mesh != devices:
    raise UserError(
      f"--mesh data={args.mesh} does not span the {devices} devices ({jax.process_count()} "
      f"process(es) × {jax.local_device_count()}); a mesh must hold every device: pass "
      f"--mesh data={devices}, or --data-parallel."
    )
  batch = getattr(args, "batch_size", None)
  if args.command == "train" and batch is not None and batch % devices:
    raise UserError(
      f"--batch-size {batch} cannot be split evenly over the {devices} devices; pass a "
      f"multiple of {devices} (e.g. {max(devices, batch // devices * devices)})."
    )
  args.device_mesh = shd.data_mesh()


def _on_devices(splits: data.NoisySplits, mesh: Any, say) -> data.NoisySplits:
  """``splits`` with its inputs as global arrays over ``mesh``: each split cut to a
  multiple of the devices, each process passing its own consecutive part of the inputs
  (`sharding.from_process_local`); the labels (small) and the noise mask stay on the host,
  cut alike. Unchanged without a mesh."""
  if mesh is None:
    return splits
  import jax

  devices, processes, me = jax.device_count(), jax.process_count(), jax.process_index()
  sizes = {"train": len(splits.x_train), "val": len(splits.x_val), "test": len(splits.x_test)}
  small = [f"{k} ({n})" for k, n in sizes.items() if n < devices]
  if small:
    raise UserError(
      f"the {', '.join(small)} split(s) hold fewer samples than the {devices} devices; use "
      "fewer devices (--mesh) or more data."
    )

  def cut(a):
    return None if a is None else a[: len(a) // devices * devices]

  def part(a):  # this process's consecutive part of the cut split
    a = cut(a)
    per = len(a) // processes
    return shd.from_process_local(a[me * per : (me + 1) * per], mesh)

  kept = {k: n // devices * devices for k, n in sizes.items()}
  dropped = ", ".join(f"{k} {sizes[k]} → {kept[k]}" for k in sizes if kept[k] != sizes[k])
  say(
    f"data-parallel over {devices} devices ({processes} process(es))"
    + (f"; splits cut to a multiple of {devices}: {dropped}" if dropped else "")
  )
  return dataclasses.replace(
    splits,
    x_train=part(splits.x_train),
    y_train=cut(splits.y_train),
    y_train_clean=cut(splits.y_train_clean),
    noise_mask=cut(splits.noise_mask),
    x_val=part(splits.x_val),
    y_val=cut(splits.y_val),
    y_val_clean=cut(splits.y_val_clean),
    x_test=part(splits.x_test),
    y_test=cut(splits.y_test),
    train_indices=cut(splits.train_indices),
    val_indices=cut(splits.val_indices),
  )


def _devices_record(splits: data.NoisySplits) -> dict[str, Any]:
  """What a checkpoint and a report record of a data-parallel run."""
  import jax

  return {
    "processes": jax.process_count(),
    "devices": jax.device_count(),
    "samples": {
      "train": len(splits.x_train),
      "val": len(splits.x_val),
      "test": len(splits.x_test),
    },
  }


def _first_process() -> bool:
  import jax

  return jax.process_index() == 0


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
    "--api",
    default=run["api"],
    choices=APIS,
    help="Flax API of the model: the Linen module, or its NNX twin (nnx: "
    f"{', '.join(sorted(NNX_MODELS))}); correct/evaluate read it from the checkpoint",
  )
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
    api=args.api,
  )


def cmd_train(args) -> int:
  (out,) = safe_write.check_targets(
    [(args.out, checkpoint.KIND, "checkpoint")], overwrite=args.overwrite
  )
  spec = _spec_from_args(args)
  dataset = _load_data(spec)
  splits = build_splits(spec)
  model, _ = _checked_model(spec, splits)
  progress = _Progress(args.quiet)
  splits = _on_devices(splits, args.device_mesh, progress.say)
  progress.say(
    f"training {spec.model} on {spec.dataset} with {spec.noise} noise: "
    f"{len(splits.x_train)} train ({int(splits.noise_mask.sum())} corrupted), "
    f"{len(splits.x_val)} noisy val, {len(splits.x_test)} clean test"
  )
  train_fn = sap_nnx.train_model if spec.api == "nnx" else train.train_model
  result = train_fn(
    model,
    splits.x_train,
    splits.y_train,
    spec.train,
    x_val=splits.x_val,
    y_val=splits.y_val,
    **progress.train_options(spec.train.epochs),
  )
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
    "data": _data_record(spec, provenance.data_fingerprint(dataset)),
    "metrics": metrics,
    "history": result.history,
  }
  if args.device_mesh is not None:
    metadata["devices"] = _devices_record(splits)
  path = checkpoint.save_checkpoint(out, variables, metadata, overwrite=args.overwrite)
  args.written.append(path)
  _print_metrics("vanilla", metrics)
  print(f"saved {path}")
  return 0


# ------------------------------------------------------------------ evaluate


def cmd_evaluate(args) -> int:
  run = _load_run(
    args.checkpoint,
    data_root=args.data_root,
    allow_changed_data=args.allow_changed_data,
    say=_stderr,
    mesh=args.device_mesh,
  )
  splits = _on_devices(run.splits, args.device_mesh, _stderr)
  metrics = split_metrics(run.apply_fn, run.variables, splits)
  report = {"checkpoint": str(args.checkpoint), "kind": run.meta.get("kind"), **metrics}
  if args.device_mesh is not None:
    report["devices"] = _devices_record(splits)
  if run.data_changed:
    report["data_changed"] = run.data_changed
  print(jsonio.dumps(report, indent=2))
  return 0


# ------------------------------------------------------------------- correct


def _per_alpha(alphas, accuracies) -> dict[float, float]:
  return dict(zip(map(float, alphas), map(float, accuracies)))


def _correct_targets(args) -> tuple[Path, Path]:
  """``--out`` and the report path, checked against the overwrite rule before any work."""
  out = Path(args.out).expanduser().absolute()
  report = Path(args.report) if args.report else out.with_name(out.name + "_report.json")
  out, report = safe_write.check_targets(
    [(out, checkpoint.KIND, "checkpoint"), (report, jsonio.REPORT, "report")],
    overwrite=args.overwrite,
    protect=[args.checkpoint],
  )
  return out, report


def _run_sap(run: _Run, *args: Any, **kwargs: Any) -> tuple[Any, Any, Any]:
  """`run_sap` on a loaded run: ``(result, corrected eval variables, variables to save)``
  (an NNX run through `sap_jax.nnx.run_sap`, saved as `sap_jax.nnx.variables_of`)."""
  if run.spec.api == "nnx":
    result = sap_nnx.run_sap(run.model, *args, **kwargs)
    return result, sap_nnx.functional(result.model)[1], sap_nnx.variables_of(result.model)
  result = run_sap(run.apply_fn, run.variables, *args, **kwargs)
  return result, result.variables, result.variables


def cmd_correct(args) -> int:
  out, report_path = _correct_targets(args)
  source = Path(args.checkpoint).absolute()
  progress = _Progress(args.quiet)
  run = _load_run(
    args.checkpoint,
    data_root=args.data_root,
    allow_changed_data=args.allow_changed_data,
    say=_stderr,
    mesh=args.device_mesh,
  )
  splits = _on_devices(run.splits, args.device_mesh, progress.say)
  apply_fn, variables = run.apply_fn, run.variables
  n_trusted = min(args.n_trusted, len(splits.x_train))
  result, corrected, saved = _run_sap(
    run,
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
    progress=progress.phase,
    tune=args.tune,
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
    "skipped": result.skipped,
    "tuning": None if result.tuning is None else tuning_report(result.tuning),
    "timings_s": result.timings,
  }
  if run.data_changed:
    report["data_changed"] = run.data_changed
  if args.device_mesh is not None:
    report["devices"] = _devices_record(splits)
  metadata = {
    "kind": "sap",
    "spec": run.spec.to_dict(),
    "data": run.data,
    "source": str(source.resolve()),
    "sap": report,
  }
  checkpoint.save_checkpoint(out, saved, metadata, overwrite=args.overwrite, protect=[source])
  args.written.append(out)
  if _first_process():  # one report, from process 0
    jsonio.write_report(report_path, report, overwrite=args.overwrite, protect=[source, out])
    args.written.append(report_path)
  _print_metrics("before SAP", before)
  alpha = "none beat the original model (kept)" if result.alpha is None else f"{result.alpha:g}"
  print(f"α chosen on the noisy validation split: {alpha}")
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
  progress = _Progress(args.quiet).train_options(spec.train.epochs)
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
  """The `sap-jax` argument parser; every option's help shows its default."""
  parser = argparse.ArgumentParser(
    prog="sap-jax",
    description="SAP (Scaled Activation Projection): one-shot correction of models trained "
    "on noisy labels.",
  )
  parser.add_argument("--version", action="version", version=f"sap-jax {sap_jax.__version__}")
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
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sap_jax checkpoint at --out (nothing else is ever replaced)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  _add_device_args(p)
  p.set_defaults(func=cmd_train)

  p = sub.add_parser(
    "evaluate",
    help="clean test / noisy val accuracy and memorisation of a checkpoint",
    formatter_class=_HelpFormatter,
  )
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train` or `sap-jax correct`")
  _add_data_check_args(p)
  _add_device_args(p)
  p.set_defaults(func=cmd_evaluate)

  sap = _keyword_defaults(run_sap)
  p = sub.add_parser(
    "correct", help="correct a trained checkpoint with SAP", formatter_class=_HelpFormatter
  )
  p.add_argument("checkpoint", help="checkpoint written by `sap-jax train`")
  p.add_argument("--out", required=True, help="new checkpoint directory (never the input)")
  p.add_argument("--report", default=None, help="JSON report path (default: <out>_report.json)")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace an existing sap_jax checkpoint at --out / sap_jax report at --report "
    "(nothing else, and never the input)",
  )
  p.add_argument("--quiet", action="store_true", help="no progress on stderr")
  _add_data_check_args(p)
  p.add_argument(
    "--alphas",
    type=_floats,
    default=_floats_text(DEFAULT_ALPHAS),
    help="α grid, comma-separated",
  )
  p.add_argument(
    "--n-trusted",
    type=_positive_int,
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
    type=_positive_int,
    default=sap["batch_size"],
    help="samples per forward pass",
  )
  p.add_argument(
    "--tune",
    choices=("per_layer",),
    default=None,
    help="after the α sweep, learn one α per layer on the noisy validation split "
    "(sap_jax.tune_alpha: 5-fold early stopping, never worse than the sweep's α on held-out "
    "folds); unset: one shared α from the grid",
  )
  _add_device_args(p)
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


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
  """Library warnings (e.g. integer images converted) as one ``warning:`` line."""
  del category, filename, lineno, line
  print(f"warning: {_one_line(message)}", file=file or sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (0, 2 for a user error, 130 on Ctrl-C)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  args.written = []
  shown, warnings.showwarning = warnings.showwarning, _show_warning
  try:
    _start_devices(args)
    compilation.enable_persistent_cache(args.compilation_cache)
    if _first_process():
      return args.func(args)
    args.quiet = True  # only process 0 prints (errors excepted)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
      return args.func(args)
  except KeyboardInterrupt:
    if args.written:
      done = " and ".join(str(p) for p in args.written)
      print(f"interrupted: only {done} was written.", file=sys.stderr)
    else:
      print("interrupted: nothing was written.", file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:
    text = _error_text(e)
    if text is None:
      raise
    print(f"error: {text}", file=sys.stderr)
    return EXIT_USER_ERROR
  finally:
    warnings.showwarning = shown


if __name__ == "__main__":
  sys.exit(main())
