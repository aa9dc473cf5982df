"""Streamed data: memory against the number of images, and what streaming costs.

Writes synthetic JPEG image folders (``root/{train,test}/<class>/*.jpg``, 32×32, 10
classes, a class colour plus noise) and measures, each in one run:

* ``--memory``: the peak RSS of ``sap-jax train`` (one epoch) and of ``sap-jax correct`` on
  a folder of each size in ``--sizes`` (each command in a fresh process, its peak RSS from
  ``wait4``), and the growth from the smallest to the largest folder;
* ``--passes``: on the smallest folder, the α sweep over a folder source read once for the
  grid (`sap_jax.streaming.score_alphas`) against one pass per α (`sap_jax.evaluate` of
  each `apply_alpha` model), and the statistics pass over the folder source (``--workers``
  grain worker processes) against the same pass over the images in memory.

``python benchmarks/bench_stream.py --sizes 20000,100000``  (the last stdout line is JSON)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CLASSES = 10


def write_folder(root: Path, n_train: int, n_test: int, size: int = 32, seed: int = 0) -> Path:
  """``root/{train,test}/c<k>/<i>.jpg``: class colour + noise, JPEG quality 90."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  colours = rng.integers(40, 216, (CLASSES, 3))
  for split, n in (("train", n_train), ("test", n_test)):
    for k in range(CLASSES):
      (root / split / f"c{k}").mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, CLASSES, n)
    for i, k in enumerate(labels):
      noise = rng.normal(0, 40, (size, size, 3))
      img = np.clip(colours[k] + noise, 0, 255).astype(np.uint8)
      Image.fromarray(img).save(root / split / f"c{k}" / f"{i:07d}.jpg", quality=90)
  return root


def _hwm_kib(pid: int) -> int | None:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1])
  except OSError:
    return None
  return None


def peak_rss_mib(cmd: list[str], cwd: Path) -> tuple[float, float]:
  """(peak RSS in MiB, seconds) of one command in a fresh process: its ``VmHWM`` (the
  high-water mark of its resident memory since exec), read every 20 ms until it exits.
  (``wait4``'s ``ru_maxrss`` would start from this process's own size at the fork.)"""
  env = {**os.environ, "SAP_JAX_COMPILATION_CACHE": "off"}
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  peak = 0
  while proc.poll() is None:
    peak = max(peak, _hwm_kib(proc.pid) or 0)
    time.sleep(0.02)
  seconds = time.perf_counter() - t0
  out, err = proc.communicate()
  if proc.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{err.decode()[-3000:]}")
  return peak / 1024.0, seconds


def memory(work: Path, sizes: list[int], say) -> dict:
  out = {}
  for n in sizes:
    root = write_folder(work / f"folder{n}", n, max(1000, n // 10))
    ckpt, sap = work / f"ckpt{n}", work / f"sap{n}"
    train = [
      *(sys.executable, "-m", "sap_jax", "train", "--dataset", "folder"),
      *("--data-root", str(root), "--model", "cnn", "--epochs", "1", "--batch-size", "256"),
      *("--noise", "symmetric:0.25", "--quiet", "--out", str(ckpt)),
    ]
    correct = [
      *(sys.executable, "-m", "sap_jax", "correct", str(ckpt), "--out", str(sap)),
      *("--n-trusted", "1000", "--quiet"),
    ]
    rss_train, t_train = peak_rss_mib(train, ROOT)
    rss_correct, t_correct = peak_rss_mib(correct, ROOT)
    say(f"{n} images: train {rss_train:.0f} MiB ({t_train:.0f} s), correct {rss_correct:.0f} MiB")
    out[n] = {
      "train_peak_rss_mib": rss_train,
      "train_s": t_train,
      "correct_peak_rss_mib": rss_correct,
      "correct_s": t_correct,
    }
  lo, hi = out[min(sizes)], out[max(sizes)]
  growth = {k: hi[k] / lo[k] - 1.0 for k in ("train_peak_rss_mib", "correct_peak_rss_mib")}
  return {"per_size": out, "growth_smallest_to_largest": growth}


def passes(work: Path, n: int, workers: int, say) -> dict:
  import jax

  import sap_jax as sj
  import sap_jax.models
  from sap_jax import streaming
  from sap_jax.data.folder import load_folder
  from sap_jax.data.sources import FolderSource

  root = work / f"folder{n}"
  if not (root / "train").exists():
    write_folder(root, n, max(1000, n // 10))
  train = FolderSource(root, "train")
  test = FolderSource(root, "test", classes=train.classes)
  model = sap_jax.models.get("cnn", num_classes=CLASSES)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  apply_fn = functools.partial(model.apply, train=False)
  trusted = np.arange(1000)

  def timed(fn):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return out, time.perf_counter() - t0

  stats, _ = timed(
    lambda: sj.activation_stats(apply_fn, variables, streaming.stats_batches(train, trusted, 256))
  )
  decomposition = sj.decompose(variables, stats)
  alphas = list(sj.DEFAULT_ALPHAS)
  warm = streaming.score_alphas(apply_fn, variables, decomposition, alphas[:1], {"t": test})
  del warm
  one_pass, t_one = timed(
    lambda: streaming.score_alphas(apply_fn, variables, decomposition, alphas, {"t": test})
  )
  models = [sj.apply_alpha(variables, decomposition, a) for a in alphas]
  sj.evaluate(apply_fn, variables, test)  # compiled before timing

  def per_alpha():
    base = sj.evaluate(apply_fn, variables, test)["accuracy"]
    return [base] + [sj.evaluate(apply_fn, m, test)["accuracy"] for m in models]

  accs, t_per = timed(per_alpha)
  assert np.allclose(accs[1:], one_pass["t"].accuracies), "the two sweeps disagree"
  say(
    f"sweep over {len(test)} images, {len(alphas)} α: one pass {t_one:.2f} s, per α {t_per:.2f} s"
  )

  def stats_source(w):
    return sj.activation_stats(
      apply_fn, variables, streaming.stats_batches(train, trusted, 256, workers=w)
    )

  ds = load_folder(root=root)
  x = ds.x_train[trusted]
  in_memory = lambda: sj.activation_stats(apply_fn, variables, sj.batched(x, 256))  # noqa: E731
  in_memory()
  _, t_mem = timed(in_memory)
  _, t_src = timed(lambda: stats_source(0))
  _, t_workers = timed(lambda: stats_source(workers))
  say(
    f"statistics of 1000 images: arrays {t_mem:.2f} s, source {t_src:.2f} s, {workers} workers {t_workers:.2f} s"
  )
  return {
    "sweep": {
      "images": len(test),
      "alphas": len(alphas),
      "one_pass_s": t_one,
      "pass_per_alpha_s": t_per,
      "ratio_per_alpha_over_one_pass": t_per / t_one,
    },
    "statistics": {
      "images": len(trusted),
      "arrays_s": t_mem,
      "source_s": t_src,
      "source_workers": workers,
      "source_with_workers_s": t_workers,
      "ratio_source_over_arrays": t_src / t_mem,
      "ratio_workers_over_arrays": t_workers / t_mem,
    },
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", default="20000,100000", help="folder sizes (training images)")
  p.add_argument("--workers", type=int, default=2, help="grain worker processes (--passes)")
  p.add_argument("--no-memory", action="store_true")
  p.add_argument("--no-passes", action="store_true")
  p.add_argument("--work", default=None, help="folder for the generated data (default: temp)")
  args = p.parse_args(argv)
  sizes = sorted(int(s) for s in args.sizes.split(","))

  def say(msg):
    print(msg, file=sys.stderr, flush=True)

  with tempfile.TemporaryDirectory() as tmp:
    work = Path(args.work or tmp)
    result = {"sizes": sizes, "cpu_count": os.cpu_count()}
    if not args.no_memory:
      result["memory"] = memory(work, sizes, say)
    if not args.no_passes:
      result["passes"] = passes(work, sizes[0], args.workers, say)
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
