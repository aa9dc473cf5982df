#!/usr/bin/env python
"""One epoch of training and one whole SAP correction at the paper's data sizes.

    python benchmarks/bench_paper_scale.py                 # paper sizes (a GPU: minutes)
    python benchmarks/bench_paper_scale.py --tiny          # tiny sizes, CPU, < 1 min
    python benchmarks/bench_paper_scale.py --runs resnet50:folder --folder-n 20000

Synthetic data of the paper's sizes, generated here: CIFAR-like arrays (50 000 × 32²,
held in memory and read as a source, as the experiment runner reads CIFAR) and a
Clothing1M-like image folder (≥ 20 000 JPEGs of 224², streamed from disk by
`sap_jax.data.sources.FolderSource`). Each run (``model:data``; default
``resnet18:cifar``, ``resnet50:folder``, ``vit_b16:folder``, the paper's pairs) trains
an epoch with the published augmentation (``TrainConfig.augment="auto"``: CIFAR crop
and flip, or RandomResizedCrop and flip, in the feeder, ``--workers`` grain processes),
then runs one whole SAP correction (`sap_jax.run_sap`: scoring every training sample,
the statistics of the N_trust trusted inputs, the α sweep on the validation split).

Compilation is kept out of the epoch's time: two epochs are trained and the second
is timed (``compile_s`` ≈ the first epoch's time less the second's). SAP is timed twice,
cold (with its compilations) and warm. The unit is one eval-mode forward pass over the
N_trust trusted inputs (best of 3, after a warm-up); the report gives each phase in
those units and in images per second. No timing is asserted anywhere; the last line of
stdout is one JSON object, progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

PAPER = dict(
  runs="resnet18:cifar,resnet50:folder,vit_b16:folder",
  cifar_n=50_000,
  folder_n=20_000,
  folder_size=224,
  n_val=5_000,
  n_trusted=1000,
  batch_size=128,
  alphas="1e4,3e4,1e5,3e5,1e6",
)
TINY = dict(
  runs="resnet18:cifar,resnet50:folder,vit_b16:folder",
  cifar_n=64,
  folder_n=48,
  folder_size=32,
  n_val=16,
  n_trusted=16,
  batch_size=16,
  alphas="1e4,1e6",
)
# --tiny: the same architectures at toy width (ResNets) or depth (ViT)
TINY_MODEL_KWARGS = {
  "resnet18": {"width": 4},
  "resnet50": {"width": 2},
  "vit_b16": {"patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64},
}
NUM_CLASSES = {"cifar": 10, "folder": 14}
# The registry model of each name (ViT-B/16 at --tiny size is the generic "vit").
TINY_MODEL_NAME = {"vit_b16": "vit"}


def _parse(argv):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--tiny", action="store_true", help="tiny sizes and models (CPU smoke run)")
  p.add_argument("--runs", help=f"model:data pairs (data: cifar or folder); {PAPER['runs']}")
  p.add_argument("--cifar-n", type=int, help="CIFAR-like training images (32²)")
  p.add_argument("--folder-n", type=int, help="folder training images")
  p.add_argument("--folder-size", type=int, help="folder image side (224)")
  p.add_argument("--n-val", type=int, help="validation images (SAP's α sweep)")
  p.add_argument("--n-trusted", type=int, help="SAP's trusted set size")
  p.add_argument("--batch-size", type=int, help="training and SAP batch size")
  p.add_argument("--alphas", help="SAP's α grid, comma-separated")
  p.add_argument("--workers", type=int, default=0, help="grain worker processes (training)")
  p.add_argument("--data-dir", help="where the folder is generated (default: a temp dir)")
  args = p.parse_args(argv)
  for key, value in (TINY if args.tiny else PAPER).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  runs = [tuple(r.split(":")) for r in args.runs.split(",") if r]
  bad = [r for r in runs if len(r) != 2 or r[1] not in NUM_CLASSES]
  if bad:
    p.error(f"--runs: give model:data pairs with data cifar or folder, got {bad}")
  args.runs = runs
  args.alphas = tuple(float(a) for a in args.alphas.split(","))
  return args


def _say(text: str) -> None:
  print(text, file=sys.stderr, flush=True)


def _cifar(n: int, n_val: int, seed: int = 0):
  """Standardised CIFAR-like arrays: random pixels with a label-dependent patch."""
  import numpy as np

  from sap_jax.data.base import standardize
  from sap_jax.data.cifar import CIFAR10_MEAN, CIFAR10_STD

  rng = np.random.default_rng(seed)
  y = rng.integers(0, 10, n + n_val)
  x = rng.random((n + n_val, 32, 32, 3), dtype=np.float32) * 0.5
  for k in range(10):
    x[y == k, 4 * (k % 4) : 4 * (k % 4) + 8, 4 * (k // 4) : 4 * (k // 4) + 8] += 0.5
  x = standardize(x, CIFAR10_MEAN, CIFAR10_STD)
  return (x[:n], y[:n]), (x[n:], y[n:])


def _write_folder(root: str, n: int, size: int, seed: int = 0) -> None:
  """root/{train,val}/<class>/*.jpg: n training and n // 10 validation images."""
  import numpy as np
  from PIL import Image

  rng = np.random.default_rng(seed)
  k = NUM_CLASSES["folder"]
  for split, count in (("train", n), ("val", max(k, n // 10))):
    for c in range(k):
      os.makedirs(os.path.join(root, split, f"c{c:02d}"), exist_ok=True)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    for i in range(count):
      c = i % k
      image = np.roll(base, shift=(7 * i) % size, axis=0)
      image[: size // 4, c * size // k : (c + 1) * size // k] = 255
      path = os.path.join(root, split, f"c{c:02d}", f"{i:06d}.jpg")
      if not os.path.exists(path):
        Image.fromarray(image).save(path, quality=90)


def _data(kind: str, args, data_dir: str):
  """(train source, val source, dataset name)."""
  from sap_jax.data.sources import ArraySource, FolderSource

  if kind == "cifar":
    (x, y), (xv, yv) = _cifar(args.cifar_n, args.n_val)
    return ArraySource(x, y), ArraySource(xv, yv), "cifar10"
  root = os.path.join(data_dir, f"folder{args.folder_size}_{args.folder_n}")
  t0 = time.perf_counter()
  _write_folder(root, args.folder_n, args.folder_size)
  _say(f"folder {root}: {args.folder_n} images ready in {time.perf_counter() - t0:.1f}s")
  train = FolderSource(root, "train", image_size=args.folder_size)
  val = FolderSource(root, "val", image_size=args.folder_size, classes=train.classes)
  return train, val, "folder"


def _model(name: str, kind: str, tiny: bool):
  from sap_jax import models

  kwargs = dict(TINY_MODEL_KWARGS[name]) if tiny else {}
  if name.startswith("resnet"):
    kwargs["stem"] = "cifar" if kind == "cifar" else "imagenet"
  registry = TINY_MODEL_NAME.get(name, name) if tiny else name
  return models.get(registry, NUM_CLASSES[kind], **kwargs), kwargs


def _unit_forward(apply_fn, variables, source, n: int, batch_size: int) -> float:
  """Best-of-3 seconds of one eval forward pass over the first n inputs (warmed up)."""
  import jax
  import numpy as np

  from sap_jax.data.feeder import feed
  from sap_jax.data.sources import Subset

  sub = Subset(source, np.arange(min(n, len(source))))
  batches = [b.x for b in feed(sub, batch_size, labelled=False)]
  fn = jax.jit(apply_fn)
  jax.block_until_ready([fn(variables, x) for x in batches])
  best = float("inf")
  for _ in range(3):
    t0 = time.perf_counter()
    jax.block_until_ready([fn(variables, x) for x in batches])
    best = min(best, time.perf_counter() - t0)
  return best


def _one_run(name: str, kind: str, args, data_dir: str) -> dict:
  import jax
  import numpy as np

  from sap_jax import run_sap, train

  source, val, dataset = _data(kind, args, data_dir)
  model, kwargs = _model(name, kind, args.tiny)
  config = train.TrainConfig(
    epochs=2, batch_size=args.batch_size, learning_rate=0.01, nesterov=True, augment="auto"
  )
  ends = []
  t0 = time.perf_counter()
  result = train.train_model(
    model,
    source,
    None,
    config,
    progress=False,
    dataset=dataset,
    workers=args.workers,
    log_fn=lambda entry: ends.append(time.perf_counter()),
  )
  first_s, epoch_s = ends[0] - t0, ends[1] - ends[0]  # the second epoch: compiled
  steps = len(source) // args.batch_size
  apply_fn = train.eval_apply_fn(model)
  variables = result.variables
  unit_s = _unit_forward(apply_fn, variables, source, args.n_trusted, args.batch_size)
  sap = {}
  for label in ("cold", "warm"):
    t0 = time.perf_counter()
    out = run_sap(
      apply_fn,
      variables,
      source,
      None,
      val,
      None,
      n_trusted=min(args.n_trusted, len(source) // 2),
      alphas=args.alphas,
      batch_size=args.batch_size,
    )
    jax.block_until_ready(out.variables)
    sap[label] = time.perf_counter() - t0
  n_trusted = min(args.n_trusted, len(source) // 2)
  forward_images_s = min(args.n_trusted, len(source)) / unit_s
  return {
    "model": name,
    "data": kind,
    "model_kwargs": kwargs,
    "n_train": len(source),
    "n_val": len(val),
    "image_shape": list(np.asarray(source[0]["image"]).shape),
    "n_trusted": n_trusted,
    "batch_size": args.batch_size,
    "train_steps": steps,
    "unit_forward_s": unit_s,
    "forward_images_per_s": forward_images_s,
    "train": {
      "first_epoch_s": first_s,
      "compile_s": max(0.0, first_s - epoch_s),
      "epoch_s": epoch_s,
      "images_per_s": steps * args.batch_size / epoch_s,
      "epoch_in_forward_passes": epoch_s / unit_s,
      "epoch_over_inference_epoch": epoch_s / (len(source) / forward_images_s),
    },
    "sap": {
      "cold_s": sap["cold"],
      "warm_s": sap["warm"],
      "warm_in_forward_passes": sap["warm"] / unit_s,
      "warm_over_train_epoch": sap["warm"] / epoch_s,
      "train_images_per_s": len(source) / sap["warm"],
      "chosen_alpha": out.alpha,
    },
  }


def main(argv=None) -> int:
  args = _parse(argv)
  import jax

  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    data_dir = args.data_dir or tmp
    runs = {}
    for name, kind in args.runs:
      _say(f"{name} on {kind} …")
      runs[f"{name}:{kind}"] = _one_run(name, kind, args, data_dir)
      _say(json.dumps(runs[f"{name}:{kind}"]))
  device = jax.devices()[0]
  report = {
    "tiny": args.tiny,
    "settings": {
      k: getattr(args, k)
      for k in ("cifar_n", "folder_n", "folder_size", "n_val", "n_trusted", "batch_size")
    }
    | {"alphas": list(args.alphas), "workers": args.workers},
    "device": {"platform": device.platform, "device_kind": device.device_kind},
    "runs": runs,
    "total_wall_s": time.perf_counter() - start,
  }
  print(json.dumps(report))
  return 0


if __name__ == "__main__":
  sys.exit(main())
