"""`sap-jax train`: the run's arguments (data, noise, model, training) and the command.

`add_run_args` adds the options of a `RunSpec` (defaults from `RunSpec` and
`TrainConfig`), `spec_from_args` turns them back into the spec, `check_majority_noise`
refuses noise past which a class's true label is no longer its majority, and `cmd_train`
trains, evaluates and saves the checkpoint. `print_metrics` is the one-line result that
`train` and `correct` print.
"""

from __future__ import annotations

import argparse

import sap_jax.nnx as sap_nnx
from sap_jax import checkpoint, data, init_from, models, noise, provenance, safe_write, train
from sap_jax.cli.args import field_defaults, kv
from sap_jax.cli.devices import devices_record, on_devices
from sap_jax.cli.errors import UserError
from sap_jax.cli.progress import Progress
from sap_jax.cli.runs import checked_model, data_record, labels_record, load_spec_data
from sap_jax.metrics import split_metrics
from sap_jax.models.nnx_zoo import NNX_MODELS
from sap_jax.spec import APIS, RunSpec, build_splits
from sap_jax.train_config import AUGMENTS

__all__ = ["add_run_args", "check_majority_noise", "cmd_train", "print_metrics", "spec_from_args"]


def print_metrics(name: str, m: dict[str, float | None]) -> None:
  fit = m.get("fit_noisy")
  fit = "" if fit is None else f", fits {100 * fit:.1f}% of the corrupted labels"
  print(f"{name}: clean test accuracy {100 * m['test_accuracy']:.2f}%{fit}")


def add_run_args(p: argparse.ArgumentParser) -> None:
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


def spec_from_args(args) -> RunSpec:
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


def check_majority_noise(spec_noise: str, num_classes: int, args, dataset=None) -> None:
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
  spec = spec_from_args(args)
  dataset = load_spec_data(spec)
  check_majority_noise(spec.noise, dataset.num_classes, args, dataset)
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
    mesh=args.device_mesh,
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
  metrics = split_metrics(apply_fn, eval_variables, splits, mesh=args.device_mesh)
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
  print_metrics("vanilla", metrics)
  print(f"saved {path}")
  return 0
