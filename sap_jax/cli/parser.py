"""The full `sap-jax` argument parser: every command's options, each help showing its
default; the top level (global options, the commands) is `sap_jax.cli.top`'s.
"""

from __future__ import annotations

import argparse

from sap_jax import DEFAULT_ALPHAS, run_sap, sample_scores, solve
from sap_jax.cli.args import (
  add_layer_call_arg,
  alpha_grid,
  floats_text,
  keyword_defaults,
  positive_int,
)
from sap_jax.cli.correct_command import cmd_correct
from sap_jax.cli.demo_command import cmd_demo
from sap_jax.cli.devices import add_device_args
from sap_jax.cli.evaluate_command import cmd_evaluate
from sap_jax.cli.top import top_parser
from sap_jax.cli.train_command import add_run_args, cmd_train

__all__ = ["build_parser"]


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
  add_run_args(p)
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
    "--score",
    default=sap["score"],
    choices=sample_scores.SCORES,
    help="how to rank trusted samples",
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
