"""Child programs of tests/test_sharding.py: SAP on many devices and on many processes.

``python -m tests.sharding_child devices OUT``: run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` (8 CPU devices in one process);
computes everything on host arrays (one device) and on global arrays sharded over the 8
devices and writes both, with the compiled statistics programs' collectives, to OUT (json).

``python -m tests.sharding_child process OUT I PORT``: process I of 2 joined by
`jax.distributed.initialize` on 127.0.0.1:PORT, 4 CPU devices each; each process passes
only its half of the data (`sap_jax.sharding.from_process_local`); process 0 writes the
`run_sap` result and a short data-parallel training's to OUT.

The test compares; the children only compute (same seeds as `case`).
"""

from __future__ import annotations

import functools
import json
import sys

import numpy as np

N_TRAIN, N_VAL, N_TRUSTED, BATCH = 96, 32, 37, 12
ALPHAS = (10.0, 100.0, 1000.0)


def case():
  """The model, its variables and the data every child and the test use."""
  import flax.linen as nn
  import jax

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.relu(nn.Conv(4, (3, 3))(x)).mean((1, 2))
      x = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(x)

  rng = np.random.default_rng(0)
  x = rng.normal(size=(N_TRAIN + N_VAL, 6, 6, 2)).astype(np.float32)
  y = rng.integers(0, 3, N_TRAIN + N_VAL).astype(np.int32)
  model = Net()
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  apply_fn = functools.partial(model.apply)
  return apply_fn, variables, x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


def sap_summary(result, apply_fn, variables) -> dict:
  """What the test compares of a `run_sap` result (host values only)."""
  import jax

  import sap_jax

  corrected = sap_jax.apply_alpha(variables, result.decomposition, 300.0)
  return {
    "alpha": result.alpha,
    "trusted": np.asarray(result.trusted_indices).tolist(),
    "val": np.asarray(result.sweep.splits["val"].accuracies).tolist(),
    "rows": {k: v["rows"] for k, v in result.layers.items()},
    "spectra": {
      "/".join(p): np.asarray(s).tolist() for p, s in result.decomposition.spectra.items()
    },
    "corrected": {
      "/".join(str(k.key) for k in path): np.asarray(leaf).tolist()
      for path, leaf in jax.tree_util.tree_leaves_with_path(corrected)
    },
  }


def train_summary(mesh) -> dict:
  """A short training (BatchNorm, dropout-free) on one device (mesh None) or a mesh."""
  import jax

  from sap_jax.train import train_model
  from sap_jax.train_config import TrainConfig
  from tests.train_cases import TinyMLP, blobs

  x, y = blobs(96)
  config = TrainConfig(epochs=3, batch_size=32, learning_rate=0.1)
  result = train_model(TinyMLP(bn=True), x, y, config, progress=False, mesh=mesh)
  return {
    "history": [h["loss"] for h in result.history],
    "variables": {
      jax.tree_util.keystr(p): np.asarray(leaf).tolist()
      for p, leaf in jax.tree_util.tree_leaves_with_path(result.variables)
    },
  }


def _gram_dict(stats) -> dict:
  return {
    "/".join(p): {"gram": np.asarray(s.gram).tolist(), "count": float(s.count)}
    for p, s in stats.items()
  }


def spread_grams() -> dict:
  """11 Gram matrices of assorted sizes (more layers than the 8 devices: 2 slots)."""
  rng = np.random.default_rng(1)
  grams = {}
  for i, d in enumerate((24, 8, 16, 5, 12, 9, 3, 20, 7, 6, 4)):
    r = rng.normal(size=(3 * d, d)).astype(np.float32)
    grams[(f"g{i}",)] = r.T @ r
  return grams


def _leaves(variables) -> dict:
  import jax

  return {
    jax.tree_util.keystr(p): np.asarray(leaf).tolist()
    for p, leaf in jax.tree_util.tree_leaves_with_path(variables)
  }


def _rounds(res, apply_fn, variables, x, xv, mesh) -> None:
  """`correct` in 2 rounds with a row budget and a batch the 8 devices do not divide, and
  `sap_rounds` on labels that the α = 300 model fits (so round 1 runs), on host and
  sharded inputs."""
  import sap_jax
  from sap_jax import sharding as shd
  from sap_jax.correction import sap_rounds
  from sap_jax.evaluation import predict_logits

  xt = x[:40]
  fitted = sap_jax.correct(apply_fn, variables, xt, 300.0, batch_size=16)
  yv = np.argmax(predict_logits(apply_fn, fitted, xv), -1).astype(np.int32)
  kw = dict(batch_size=12, rows_per_batch=100)
  for side, (xa, xva, yva) in (
    ("one", (xt, xv, yv)),
    ("many", (shd.shard_batch(xt, mesh), shd.shard_batch(xv, mesh), shd.shard_batch(yv, mesh))),
  ):
    two = sap_jax.correct(apply_fn, variables, xa, 300.0, rounds=2, **kw)
    res[side]["correct_rounds"] = _leaves(two)
    got = sap_rounds(apply_fn, variables, xa, xva, yva, (300.0, 3000.0), rounds=2, **kw)
    res[side]["sap_rounds"] = {
      "alphas": list(got.alphas),
      "records": [[r.alphas.tolist(), r.accuracies.tolist(), r.baseline] for r in got.records],
      "variables": _leaves(got.variables),
    }


def _mixed_methods(res, apply_fn, variables, host, sharded, mesh) -> None:
  """`run_sap` and `correct` with the conv on the solve path and the Dense layers on eigh
  (the cost model patched: every layer here is narrower than solve.AUTO_MIN_WIDTH), on one
  device and on the mesh (each eigh layer's eigh on one device, the solve layer prepared
  where its replicated Gram matrix is)."""
  import jax

  import sap_jax
  from sap_jax import solve as slv

  real = slv.choose_method
  slv.choose_method = lambda d, out, k, groups=1: "solve" if d == 18 else "eigh"
  try:
    kw = dict(n_trusted=N_TRUSTED, batch_size=BATCH, alphas=ALPHAS)
    for side, args in (("one", host), ("many", sharded)):
      result = sap_jax.run_sap(apply_fn, variables, *args, **kw)
      res[side]["sap_mixed"] = sap_summary(result, apply_fn, variables)
      res[side]["sap_mixed"]["methods"] = {
        "/".join(p): m for p, m in result.decomposition.methods.items()
      }
      xt = host[0][:40] if side == "one" else sap_jax.sharding.shard_batch(host[0][:40], mesh)
      corrected = sap_jax.correct(apply_fn, variables, xt, 300.0, batch_size=16)
      res[side]["correct_mixed"] = {
        jax.tree_util.keystr(p): np.asarray(leaf).tolist()
        for p, leaf in jax.tree_util.tree_leaves_with_path(corrected)
      }
  finally:
    slv.choose_method = real


def devices(out: str) -> None:
  import jax

  import sap_jax
  from sap_jax import sharding as shd
  from sap_jax.evaluation import evaluate, predict_logits
  from sap_jax.spread_eigh import spread_eigh, spread_hlo
  from sap_jax.stats.sharded import sharded_stats_hlo

  assert jax.device_count() == 8, jax.devices()
  apply_fn, variables, x, y, xv, yv = case()
  mesh = shd.data_mesh()
  xs, ys = shd.shard_batch(x, mesh), shd.shard_batch(y, mesh)
  xvs, yvs = shd.shard_batch(xv, mesh), shd.shard_batch(yv, mesh)
  res: dict = {"one": {}, "many": {}}
  for budget in (None, 100):
    tag = f"stats_budget_{budget}"
    res["one"][tag] = _gram_dict(
      sap_jax.activation_stats(apply_fn, variables, sap_jax.batched(x, 16), rows_per_batch=budget)
    )
    consecutive = [shd.shard_batch(x[i : i + 16], mesh) for i in range(0, N_TRAIN, 16)]
    res["many"][tag] = _gram_dict(
      sap_jax.activation_stats(apply_fn, variables, consecutive, rows_per_batch=budget)
    )
    res["many"][tag + "_local"] = _gram_dict(
      sap_jax.activation_stats(
        apply_fn, variables, shd.local_batches(xs, 16), rows_per_batch=budget
      )
    )
  hlo = sharded_stats_hlo(apply_fn, variables, consecutive[0])
  res["collectives"] = {
    name: [[c.kind, [list(s) for _, s in c.shapes]] for c in shd.collectives(text)]
    for name, text in hlo.items()
  }
  res["one"]["losses"] = sap_jax.per_example_loss(apply_fn, variables, x, y).tolist()
  res["many"]["losses"] = sap_jax.per_example_loss(apply_fn, variables, xs, ys, batch_size=20)
  res["many"]["losses"] = res["many"]["losses"].tolist()
  res["one"]["eval"] = evaluate(apply_fn, variables, xv, yv)
  res["many"]["eval"] = evaluate(apply_fn, variables, xvs, yvs, batch_size=16)
  res["one"]["logits"] = predict_logits(apply_fn, variables, xv).tolist()
  res["many"]["logits"] = predict_logits(apply_fn, variables, xvs, batch_size=24).tolist()
  for budget in (None, 50):
    kw = dict(n_trusted=N_TRUSTED, batch_size=BATCH, rows_per_batch=budget, alphas=ALPHAS)
    one = sap_jax.run_sap(apply_fn, variables, x, y, xv, yv, **kw)
    many = sap_jax.run_sap(apply_fn, variables, xs, ys, xvs, yvs, **kw)
    res["one"][f"sap_{budget}"] = sap_summary(one, apply_fn, variables)
    res["many"][f"sap_{budget}"] = sap_summary(many, apply_fn, variables)
    res["many"][f"sap_{budget}_replicated"] = all(
      leaf.sharding.is_fully_replicated for leaf in jax.tree_util.tree_leaves(many.variables)
    )
  kw = dict(n_trusted=N_TRUSTED, batch_size=BATCH, alphas=ALPHAS, tune="per_layer")
  kw["tune_options"] = {"folds": 2, "steps": 3}
  for side, args in (("one", (x, y, xv, yv)), ("many", (xs, ys, xvs, yvs))):
    tuning = sap_jax.run_sap(apply_fn, variables, *args, **kw).tuning
    res[side]["tuned"] = None if tuning is None else sap_jax.tuning_report(tuning)["alpha"]
  dec = sap_jax.decompose(variables, sap_jax.activation_stats(apply_fn, variables, [x[:40]]))
  for side, (xa, ya) in (("one", (xv, yv)), ("many", (xvs, yvs))):
    xt = x[:40] if side == "one" else shd.shard_batch(x[:40], mesh)
    sens = sap_jax.alpha_sensitivity(apply_fn, variables, dec, xa, ya, 300.0)
    infl = sap_jax.trusted_influence(apply_fn, variables, dec, xt, xa, ya, 300.0)
    res[side]["sensitivity"] = {"/".join(p): float(g) for p, g in sens.per_layer.items()}
    res[side]["influence"] = np.asarray(infl.scores).tolist()
  for side, xt in (("one", x[:40]), ("many", shd.shard_batch(x[:40], mesh))):
    corrected = sap_jax.correct(apply_fn, variables, xt, 300.0, batch_size=16)
    res[side]["correct"] = {
      jax.tree_util.keystr(p): np.asarray(leaf).tolist()
      for p, leaf in jax.tree_util.tree_leaves_with_path(corrected)
    }
  _mixed_methods(res, apply_fn, variables, (x, y, xv, yv), (xs, ys, xvs, yvs), mesh)
  _rounds(res, apply_fn, variables, x, xv, mesh)
  for mesh_or_none, side in ((None, "one"), (mesh, "many")):
    res[side]["train"] = train_summary(mesh_or_none)
  grams = spread_grams()
  spread = spread_eigh(shd.replicate(grams, mesh), mesh)
  one = {p: jax.jit(sap_jax.projection.eigh_basis)(g) for p, g in grams.items()}
  res["eigh_spread"] = {
    p[0]: [np.asarray(b.spectrum).tolist(), np.asarray(b.vectors).tolist()]
    for p, b in spread.items()
  }
  res["eigh_one"] = {
    p[0]: [np.asarray(b.spectrum).tolist(), np.asarray(b.vectors).tolist()] for p, b in one.items()
  }
  res["spread_hlo"] = spread_hlo(shd.replicate(grams, mesh), mesh)
  ids = np.arange(40, dtype=np.float32)  # 5 samples per device, 2 per batch: 2, 2, 1 + pad
  res["padded_batches"] = [
    [shd.to_host(b.x).tolist(), shd.to_host(b.starts).tolist(), shd.to_host(b.valid).tolist()]
    for b in shd.local_batches(shd.shard_batch(ids, mesh), 16, pad=True)
  ]
  bad = jax.device_put(
    np.zeros((8, 16, 6, 2), np.float32),
    jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, "data")),
  )
  errors = {
    "indivisible": lambda: shd.shard_batch(x[:10], mesh),
    "stats_not_batch": lambda: sap_jax.activation_stats(apply_fn, variables, [bad]),
    "loss_not_batch": lambda: sap_jax.per_example_loss(apply_fn, variables, bad, y[:8]),
    "local_batches_indivisible": lambda: list(shd.local_batches(xs, 12)),
    "nan_in_later_batch": lambda: sap_jax.activation_stats(
      apply_fn,
      variables,
      [
        shd.shard_batch(x[:16], mesh),
        shd.shard_batch(np.full((16, 6, 6, 2), np.nan, np.float32), mesh),
      ],
    ),
  }
  res["errors"] = {}
  for name, fn in errors.items():
    try:
      fn()
      res["errors"][name] = None
    except ValueError as err:
      res["errors"][name] = str(err)
  with open(out, "w") as f:
    json.dump(res, f)


def process(index: int, port: int, out: str) -> None:
  import jax

  jax.config.update("jax_num_cpu_devices", 4)
  jax.distributed.initialize(
    f"127.0.0.1:{port}", num_processes=2, process_id=index, initialization_timeout=60
  )
  import sap_jax
  from sap_jax import sharding as shd

  assert jax.device_count() == 8 and jax.local_device_count() == 4
  apply_fn, variables, x, y, xv, yv = case()
  mesh = shd.data_mesh()

  def mine(a):  # this process's consecutive half
    half = len(a) // 2
    return a[index * half : (index + 1) * half]

  xs, ys = shd.from_process_local(mine(x), mesh), shd.from_process_local(mine(y), mesh)
  xvs, yvs = shd.from_process_local(mine(xv), mesh), shd.from_process_local(mine(yv), mesh)
  result = sap_jax.run_sap(
    apply_fn,
    variables,
    xs,
    ys,
    xvs,
    yvs,
    n_trusted=N_TRUSTED,
    batch_size=BATCH,
    rows_per_batch=50,
    alphas=ALPHAS,
  )
  summary = sap_summary(result, apply_fn, variables)
  summary["train"] = train_summary(mesh)
  if index == 0:
    with open(out, "w") as f:
      json.dump(summary, f)
  jax.distributed.shutdown()


if __name__ == "__main__":
  if sys.argv[1] == "devices":
    devices(sys.argv[2])
  else:
    process(int(sys.argv[3]), int(sys.argv[4]), sys.argv[2])
