#!/usr/bin/env python
"""SAP on sharded arrays: bytes moved between devices, and statistics and eigh time, at 1–8 devices.

    python benchmarks/bench_sharding.py                  # full (ResNet18-CIFAR width 16), minutes
    python benchmarks/bench_sharding.py --quick          # tiny (digits CNN), < 30 s
    python benchmarks/bench_sharding.py --devices 1,2,4,8 --batches 2,4,8 --reps 3

Each device count N runs in a child process of its own: on CPU (the default) with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (N host devices sharing the
machine's cores); with ``--platform gpu`` or ``tpu``, on the first N real devices. The
parent only orchestrates; the last line of stdout is one JSON object with every figure
(progress goes to stderr).

Bytes come from the compiled programs' HLO (`sap_jax.sharding.collectives`), never from a
run. Per collective, B = the bytes of the shapes it produces on each device
(`Collective.bytes`: an all-reduce's B is what each device contributes, an all-gather's
the N devices' parts together), and a ring estimate of the bytes each device sends:
all-reduce 2(N−1)/N·B, all-gather and all-to-all (N−1)/N·B, reduce-scatter (N−1)·B,
collective-permute B. Programs:

  * ``losses`` (`per_example_loss`, per sample batch) and ``losses_to_host`` (the batch's
    losses all-gathered for the ranking);
  * ``trusted_gather`` (`sap_jax.sharding.gather_rows` of the trusted samples, once);
  * ``stats_step`` (per batch) and ``stats_combine`` (once per run), at each batch count;
  * ``spread_eigh`` (once: every layer's basis shared by one all-reduce);
  * ``eval_batch`` (per α and validation batch) and ``project`` (`apply_alpha`, per α).

``bytes_per_correction``: what `sap_jax.correct` moves (stats_step × batches +
stats_combine + spread_eigh); ``bytes_per_run_sap`` adds the scoring, the gather and the
α sweep of `sap_jax.run_sap`.

Times (min of ``--reps`` after a warm-up, compilation excluded): the statistics pass over
the trusted set, and every layer's eigh: on the N-device mesh (statistics on local
batches; eigh spread by `sap_jax.spread_eigh`, and redundantly as a jitted eigh of each
replicated Gram matrix) and on one device (device 0 of the same process, interleaved
with the others so that both see the same machine load), as ratios t_N / t_1. On CPU the
N devices share the same cores, so the ratios measure the overhead of sharding (and the
redundant eigh's N-fold work); on N real accelerators, 1 / ratio is the speed-up.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

FULL = dict(model="resnet18", width=16, n_trusted=256, batches="2,4,8", devices="1,2,4,8", reps=3)
QUICK = dict(model="cnn", width=8, n_trusted=64, batches="2,4", devices="2,4", reps=1)
STATS_BATCHES = 4  # the batch count of the timed statistics pass and of run_sap's figures
ALPHAS = 5  # α values of the sweep counted in bytes_per_run_sap


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test")
  p.add_argument("--model", choices=("resnet18", "cnn"), help="resnet18 (CIFAR stem) or cnn")
  p.add_argument("--width", type=int, help="channels of the first conv")
  p.add_argument("--n-trusted", type=int, help="trusted samples (a multiple of 8 × batches)")
  p.add_argument("--batches", help="statistics batch counts of the bytes figures (comma list)")
  p.add_argument("--devices", help="device counts, one child process each (comma list)")
  p.add_argument("--reps", type=int, help="timed repetitions (the minimum is reported)")
  p.add_argument("--platform", default="cpu", help="cpu (host devices), gpu or tpu")
  p.add_argument("--blas-threads", type=int, default=1, help="OpenBLAS/OMP threads (0: leave)")
  p.add_argument(
    "--compile-cache",
    help="JAX persistent compilation cache dir shared by the children (default: a fresh "
    "temporary dir; 'off' to disable); compilation is never timed",
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--child", type=int, help=argparse.SUPPRESS)  # N: run one device count
  args = p.parse_args(argv)
  for k, v in (QUICK if args.quick else FULL).items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  args.batches = [int(b) for b in str(args.batches).split(",") if b]
  args.devices = [int(n) for n in str(args.devices).split(",") if n]
  for n in args.devices:
    for b in [*args.batches, STATS_BATCHES]:
      if args.n_trusted % (n * b):
        p.error(f"--n-trusted {args.n_trusted} must split into {b} batches over {n} devices.")
  return args


def log(*a) -> None:
  print(f"[{time.perf_counter() - _T0:6.1f}s]", *a, file=sys.stderr, flush=True)


_T0 = time.perf_counter()

# --------------------------------------------------------------------------------------
# The child: one device count (JAX imported here only).
# --------------------------------------------------------------------------------------


def setup(args):
  """(apply_fn, variables, input shape): random He-scaled weights without ``model.init``
  (whose PRNG program takes seconds to compile on CPU); fine for bytes and timing."""
  import jax
  import numpy as np

  import sap_jax.models as models
  from sap_jax.train import eval_apply_fn

  if args.model == "resnet18":
    model, shape = models.get("resnet18", 10, stem="cifar", width=args.width), (32, 32, 3)
  else:
    model, shape = models.get("cnn", 10, width=args.width), (8, 8, 1)
  x1 = np.zeros((1, *shape), np.float32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x1, train=False))
  rng = np.random.default_rng(args.seed)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "kernel":
      fan_in = int(np.prod(leaf.shape[:-1])) or 1
      return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)
    if name in ("scale", "var"):
      return np.ones(leaf.shape, leaf.dtype)
    return np.zeros(leaf.shape, leaf.dtype)

  return eval_apply_fn(model), jax.tree_util.tree_map_with_path(fill, dict(shapes)), shape


def ring_bytes(kind: str, produced: int, n: int) -> float:
  """Bytes each device sends in a ring implementation of a collective over n devices
  that produces ``produced`` bytes on each (`Collective.bytes`)."""
  if kind == "all-reduce":
    return 2 * (n - 1) / n * produced
  if kind in ("all-gather", "all-to-all"):
    return (n - 1) / n * produced
  if kind == "reduce-scatter":
    return (n - 1) * produced
  return float(produced)  # collective-permute


def program_bytes(hlo: str, n: int, runs: int) -> dict:
  from sap_jax.sharding import collectives

  coll = collectives(hlo)
  return {
    "collectives": [[c.kind, c.bytes] for c in coll],
    "bytes": sum(c.bytes for c in coll),
    "ring_bytes_per_device": sum(ring_bytes(c.kind, c.bytes, n) for c in coll),
    "runs_per_correction": runs,
  }


def best_of(fns: dict, reps: int) -> dict:
  """name → min seconds over ``reps`` timed calls (after one warm-up call each), the
  variants interleaved so that they see the same machine load."""
  import jax

  for fn in fns.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  return {name: min(ts) for name, ts in times.items()}


def child(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import sap_jax
  from sap_jax import sharding as shd
  from sap_jax.compile_cache import compiled_functions
  from sap_jax.hashable import hashable
  from sap_jax.layers import path_name
  from sap_jax.spread_eigh import spread_eigh, spread_hlo, spread_plan
  from sap_jax.stats.sharded import sharded_stats_hlo

  n = args.child
  if len(jax.devices()) < n:
    raise SystemExit(f"{n} devices asked, {len(jax.devices())} present: {jax.devices()}")
  devices = jax.devices()[:n]
  mesh = shd.data_mesh(devices)
  programs = compiled_functions()
  apply_fn, variables, shape = setup(args)
  rng = np.random.default_rng(args.seed)
  n_t = args.n_trusted
  x_train = rng.standard_normal((2 * n_t, *shape), dtype=np.float32)
  y_train = rng.integers(0, 10, 2 * n_t).astype(np.int32)
  xt = x_train[:n_t]
  bs = n_t // STATS_BATCHES
  variables_r = shd.replicate(variables, mesh)
  xt_s = shd.shard_batch(xt, mesh)
  log(f"{n} devices: statistics")
  stats_one = sap_jax.activation_stats(apply_fn, variables, sap_jax.batched(xt, bs))
  stats = sap_jax.activation_stats(apply_fn, variables_r, sap_jax.batched(xt_s, bs))
  grams = {p: s.gram for p, s in stats.items()}
  layers = {
    path_name(p): {
      "d": s.layout.dim,
      "groups": s.layout.groups,
      "kernel_shape": list(s.layout.kernel_shape),
      "gram_shape": list(s.gram.shape),
    }
    for p, s in stats.items()
  }
  checks = {
    "stats_max_rel_diff": max(
      float(np.abs(np.asarray(s.gram) - np.asarray(stats_one[p].gram)).max())
      / float(np.abs(np.asarray(stats_one[p].gram)).max())
      for p, s in stats.items()
    )
  }
  res = {"devices": n, "device_kind": devices[0].device_kind, "layers": layers}
  res["plan"] = spread_plan([g.shape for g in grams.values()], n).tolist()

  log(f"{n} devices: compiled programs' collectives")
  zero = program_bytes("", n, 0)
  by_batches = {}
  for nb in args.batches:
    if n == 1:  # one device: nothing crosses devices (and no sharded program exists)
      step, combine = zero, zero
    else:
      hlo = sharded_stats_hlo(apply_fn, variables, shd.shard_batch(xt[: n_t // nb], mesh))
      step, combine = program_bytes(hlo["step"], n, nb), program_bytes(hlo["combine"], n, 1)
    by_batches[str(nb)] = {
      "batch_size": n_t // nb,
      "stats_step": step,
      "stats_combine": combine,
      "bytes": nb * step["bytes"] + combine["bytes"],
      "ring_bytes_per_device": nb * step["ring_bytes_per_device"]
      + combine["ring_bytes_per_device"],
    }
  res["stats_by_batches"] = by_batches
  n_loss, n_eval = len(x_train) // bs, len(xt) // bs  # batches (validation split: n_t samples)
  if n == 1:
    names = ("losses", "losses_to_host", "trusted_gather", "spread_eigh", "eval_batch", "project")
    prog = dict.fromkeys(names, zero)
  else:
    fn = hashable(apply_fn)
    xs, ys = shd.shard_batch(x_train, mesh), shd.shard_batch(y_train, mesh)
    (xb, yb), _ = next(shd.sample_batches((xs, ys), bs))
    losses = programs["trusted.losses"](fn, variables_r, xb, yb)
    trusted = np.sort(rng.permutation(len(x_train))[:n_t])
    decomposition = sap_jax.decompose(variables_r, stats, bases=spread_eigh(grams, mesh))
    mask = jnp.ones(len(yb), bool)
    prog = {
      "losses": programs["trusted.losses"].lower(fn, variables_r, xb, yb),
      "losses_to_host": shd.transfer_hlo(losses),
      "trusted_gather": shd.transfer_hlo(xs, trusted),
      "spread_eigh": spread_hlo(grams, mesh),
      "eval_batch": programs["evaluation.eval_batch"].lower(fn, variables_r, xb, yb, mask),
      "project": programs["sweep.project"].lower(decomposition, jnp.float32(1e3)),
    }
    prog = {k: v if isinstance(v, str) else v.compile().as_text() for k, v in prog.items()}
    runs = dict(
      losses=n_loss, losses_to_host=n_loss, trusted_gather=1, spread_eigh=1, project=ALPHAS
    )
    runs["eval_batch"] = (ALPHAS + 1) * n_eval
    prog = {k: program_bytes(v, n, runs[k]) for k, v in prog.items()}
  res["programs"] = prog
  stats_nb = by_batches.get(str(STATS_BATCHES)) or next(iter(by_batches.values()))

  def total(key: str, names) -> float:
    return sum(prog[k][key] * prog[k]["runs_per_correction"] for k in names)

  corr = ("spread_eigh",)
  full = ("losses", "losses_to_host", "trusted_gather", "spread_eigh", "eval_batch", "project")
  res["bytes_per_correction"] = stats_nb["bytes"] + total("bytes", corr)
  res["ring_bytes_per_device_per_correction"] = stats_nb["ring_bytes_per_device"] + total(
    "ring_bytes_per_device", corr
  )
  res["bytes_per_run_sap"] = stats_nb["bytes"] + total("bytes", full)
  res["bytes_per_run_sap_settings"] = {
    "n_train": len(x_train),
    "n_trusted": n_t,
    "n_val": len(xt),
    "batch_size": bs,
    "alphas": ALPHAS,
  }

  log(f"{n} devices: timing (reps {args.reps})")
  eigh = programs["sweep.eigh"]
  grams_one = {p: jax.device_put(np.asarray(g), devices[0]) for p, g in grams.items()}
  batches_one, batches_mesh = sap_jax.batched(xt, bs), sap_jax.batched(xt_s, bs)
  times = best_of(
    {
      "stats_one": lambda: sap_jax.activation_stats(apply_fn, variables, batches_one),
      "stats_mesh": lambda: sap_jax.activation_stats(apply_fn, variables_r, batches_mesh),
      "eigh_one": lambda: {p: eigh(g) for p, g in grams_one.items()},
      "eigh_redundant": lambda: {p: eigh(g) for p, g in grams.items()},
      "eigh_spread": lambda: spread_eigh(grams, mesh),
    },
    args.reps,
  )
  res["times_s"] = times
  res["ratios_vs_one_device"] = {
    "stats": times["stats_mesh"] / times["stats_one"],
    "eigh_redundant": times["eigh_redundant"] / times["eigh_one"],
    "eigh_spread": times["eigh_spread"] / times["eigh_one"],
  }
  spread = spread_eigh(grams, mesh)
  one = {p: eigh(g) for p, g in grams_one.items()}
  checks["spread_max_abs_diff"] = max(
    float(np.abs(np.asarray(spread[p].spectrum) - np.asarray(one[p].spectrum)).max()) for p in grams
  )
  res["checks"] = checks
  return res


# --------------------------------------------------------------------------------------
# The parent: one child per device count.
# --------------------------------------------------------------------------------------


def child_flags(args) -> list[str]:
  flags = ["--model", args.model, "--width", str(args.width), "--n-trusted", str(args.n_trusted)]
  flags += ["--batches", ",".join(map(str, args.batches)), "--reps", str(args.reps)]
  flags += ["--devices", ",".join(map(str, args.devices)), "--platform", args.platform]
  flags += ["--compile-cache", args.compile_cache]
  return flags + ["--seed", str(args.seed), "--blas-threads", str(args.blas_threads)]


def run_child(args, n: int) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["JAX_PLATFORMS"] = args.platform
  if args.platform == "cpu":
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n}"
  if args.blas_threads > 0:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
      env[var] = str(args.blas_threads)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  cmd = [sys.executable, os.path.abspath(__file__), *child_flags(args), "--child", str(n)]
  t = time.perf_counter()
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=root)
  sys.stderr.write(proc.stderr[-2000:] if proc.returncode else "")
  if proc.returncode != 0:
    raise RuntimeError(f"child for {n} devices failed (exit {proc.returncode})")
  res = json.loads(proc.stdout.strip().splitlines()[-1])
  res["child_wall_s"] = round(time.perf_counter() - t, 2)
  return res


def summary(points: dict) -> dict:
  """The figures the README quotes: bytes per correction and their growth, time ratios."""
  out = {}
  for n, r in points.items():
    by_b = r["stats_by_batches"]
    out[n] = {
      "bytes_per_correction": r["bytes_per_correction"],
      "ring_bytes_per_device_per_correction": r["ring_bytes_per_device_per_correction"],
      "bytes_per_run_sap": r["bytes_per_run_sap"],
      "stats_bytes_by_batches": {nb: v["bytes"] for nb, v in by_b.items()},
      "stats_bytes_constant_in_batches": len({v["bytes"] for v in by_b.values()}) == 1,
      "spread_eigh_bytes": r["programs"]["spread_eigh"]["bytes"],
      **{f"ratio_{k}": round(v, 3) for k, v in r["ratios_vs_one_device"].items()},
      **{f"{k}_s": round(v, 4) for k, v in r["times_s"].items()},
    }
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.blas_threads > 0:
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
      os.environ[var] = str(args.blas_threads)
  if args.child is not None:
    if args.compile_cache and args.compile_cache != "off":
      import jax

      jax.config.update("jax_compilation_cache_dir", args.compile_cache)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    res = child(args)
    print(json.dumps(res))
    return res
  points = {}
  with tempfile.TemporaryDirectory(prefix="bench_sharding_cache_") as tmp:
    args.compile_cache = args.compile_cache or tmp
    for n in args.devices:
      log(f"child: {n} devices")
      points[str(n)] = run_child(args, n)
  label = {"resnet18": f"ResNet18-CIFAR (width {args.width})", "cnn": f"CNN (width {args.width})"}
  result = {
    "quick": args.quick,
    "settings": {
      "model": label[args.model],
      "n_trusted": args.n_trusted,
      "batches": args.batches,
      "devices": args.devices,
      "reps": args.reps,
      "platform": args.platform,
      "stats_batches_timed": STATS_BATCHES,
      "cpu_count": os.cpu_count(),
    },
    "summary": summary(points),
    "points": points,
    "total_wall_s": round(time.perf_counter() - _T0, 2),
  }
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
