"""Child program of tests/test_sharding_nnx.py: curvature scores and the NNX API on
global arrays sharded over 8 CPU devices, against one device.

``python -m tests.sharding_nnx_child OUT``, run with
``XLA_FLAGS=--xla_force_host_platform_device_count=8``: computes every result on host
arrays (one device) and on global arrays sharded over the 8 devices and writes both to
OUT (json). The test compares; the child only computes (fixed seeds).
"""

from __future__ import annotations

import json
import sys

import numpy as np

N_TRAIN, N_VAL, N_TRUSTED, BATCH = 96, 32, 37, 12
ALPHAS = (1.0, 10.0, 100.0)
CURVATURE_BATCH = 7
"""The curvature scores' batch on 8 devices of 12 samples each: batches straddle two
devices, a device meets up to three of them, the last one is short (96 = 13·7 + 5).
"""


def nnx_net():
  """A small NNX model: Conv → BatchNorm (running averages not 0/1) → Linear → Dropout →
  Linear; its Dropout's RNG stream is a typed key, replicated over the mesh for a run."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.conv = nnx.Conv(2, 4, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.blocks = nnx.List([nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)])
      self.drop = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
      h = jax.nn.relu(self.bn(self.conv(x))).mean((1, 2))
      h = self.drop(jax.nn.relu(self.blocks[0](h)))
      return self.blocks[1](h)

  model = Net(nnx.Rngs(0))
  model.bn.mean[...] = jnp.linspace(-0.2, 0.3, 4)
  model.bn.var[...] = jnp.linspace(0.5, 2.0, 4)
  k = np.random.default_rng(2).normal(size=(8, 3)).astype(np.float32)
  model.blocks[1].kernel[...] = jnp.asarray(k - k.mean(1, keepdims=True))  # 3 classes predicted
  return model


def data():
  """Inputs (a per-sample channel offset, so the pooled features differ) and random
  training labels."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(N_TRAIN + N_VAL, 6, 6, 2)) + 2 * rng.normal(size=(N_TRAIN + N_VAL, 1, 1, 2))
  x = x.astype(np.float32)
  y = rng.integers(0, 3, N_TRAIN).astype(np.int32)
  return x[:N_TRAIN], y, x[N_TRAIN:]


def validation_labels(model, x, xv) -> np.ndarray:
  """What the NNX model corrected at α = 1 on the first 37 training inputs predicts, so
  that the α sweep has a winner over the unchanged model."""
  import sap_jax.nnx as snnx
  from sap_jax.evaluation import predict_logits
  from sap_jax.nnx.functional import functional

  stats = snnx.activation_stats(model, [x[:N_TRUSTED]])
  corrected = snnx.apply_alpha(model, snnx.decompose(model, stats), 1.0)
  return np.argmax(predict_logits(*functional(corrected), xv), -1).astype(np.int32)


def _tree(tree) -> dict:
  """Every floating leaf of ``tree`` by its key path, as nested lists."""
  import jax
  import jax.numpy as jnp

  return {
    jax.tree_util.keystr(p): np.asarray(leaf).tolist()
    for p, leaf in jax.tree_util.tree_leaves_with_path(tree)
    if jnp.issubdtype(leaf.dtype, jnp.floating)
  }


def _model_tree(model) -> dict:
  from flax import nnx

  return _tree(nnx.state(model))


def linen_mlp():
  """``(apply_fn, variables)`` of a small Linen MLP on (6, 6, 2) inputs (cheap to compile:
  the curvature programs differentiate it twice)."""
  import flax.linen as nn
  import jax

  class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(3)(nn.tanh(nn.Dense(8)(x.reshape(len(x), -1))))

  model = MLP()
  return model.apply, model.init(jax.random.PRNGKey(0), np.zeros((1, 6, 6, 2), np.float32))


def nnx_mlp():
  """A small NNX MLP with Dropout (a typed-key RNG stream) on (6, 6, 2) inputs."""
  import jax.numpy as jnp
  from flax import nnx

  class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
      self.hidden = nnx.Linear(72, 8, rngs=rngs)
      self.drop = nnx.Dropout(0.5, rngs=rngs)
      self.out = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
      return self.out(self.drop(jnp.tanh(self.hidden(x.reshape(len(x), -1)))))

  return MLP(nnx.Rngs(1))


def curvature(mesh) -> dict:
  """The curvature scores on host and on sharded arrays: "curvature" of a Linen MLP,
  "curvature_published" of an NNX one (MLPs: each curvature program differentiates the
  model twice, and a conv's costs seconds more to compile)."""
  import sap_jax
  import sap_jax.nnx as snnx
  from sap_jax import sharding as shd
  from sap_jax.nnx.functional import functional
  from sap_jax.trusted import trusted_set

  apply_fn, variables = linen_mlp()
  model = nnx_mlp()
  x, y = data()[:2]
  xs, ys = shd.shard_batch(x, mesh), shd.shard_batch(y, mesh)
  out = {"one": {}, "many": {}}
  kw = dict(batch_size=CURVATURE_BATCH, seed=3)
  for side, (xa, ya) in (("one", (x, y)), ("many", (xs, ys))):
    got = sap_jax.trust_scores(apply_fn, variables, xa, ya, score="curvature", **kw)
    out[side]["curvature"] = got.tolist()
    got = snnx.trust_scores(model, xa, ya, score="curvature_published", **kw)
    out[side]["curvature_published"] = got.tolist()
    # the trusted sets they select (the same compiled programs: batch_size ≤ 128)
    sets = {
      "curvature": trusted_set(apply_fn, variables, xa, ya, 20, score="curvature", **kw),
      "curvature_published": trusted_set(
        *functional(model), xa, ya, 20, score="curvature_published", **kw
      ),
    }
    out[side]["trusted_sets"] = {k: np.asarray(v).tolist() for k, v in sets.items()}
  return out


def nnx_sap(mesh) -> dict:
  import sap_jax.nnx as snnx
  from sap_jax import sharding as shd

  model = nnx_net()
  x, y, xv = data()
  yv = validation_labels(model, x, xv)
  on = {
    "one": (x, y, xv, yv),
    "many": tuple(shd.shard_batch(a, mesh) for a in (x, y, xv, yv)),
  }
  out = {"one": {}, "many": {}}
  for side, (xa, ya, xva, yva) in on.items():
    res = out[side]
    res["losses"] = snnx.trust_scores(model, xa, ya, score="loss", batch_size=20).tolist()
    res["eval"] = snnx.evaluate(model, xva, yva, batch_size=16)
    r = snnx.run_sap(model, xa, ya, xva, yva, n_trusted=N_TRUSTED, batch_size=BATCH, alphas=ALPHAS)
    res["sap"] = {
      "alpha": r.alpha,
      "trusted": np.asarray(r.trusted_indices).tolist(),
      "val": np.asarray(r.sweep.splits["val"].accuracies).tolist(),
      "baseline": float(r.sweep.baseline_accuracy),
      "rows": {k: v["rows"] for k, v in r.layers.items()},
      "skipped": r.skipped,
      "model": _model_tree(snnx.apply_alpha(model, r.decomposition, 300.0)),
    }
    stats = snnx.activation_stats(
      model,
      shd.local_batches(xa, 16) if side == "many" else [xa[i : i + 16] for i in range(0, 96, 16)],
    )
    res["sweep"] = np.asarray(snnx.sweep_alpha(model, stats, ALPHAS, xva, yva).accuracies).tolist()
    trusted = xa[:40] if side == "one" else shd.shard_batch(x[:40], mesh)
    res["correct"] = _model_tree(snnx.correct(model, trusted, 300.0, batch_size=16))
  return out


def training(mesh) -> dict:
  """NNX train_model on one device and on the mesh, and the Linen twin on the mesh."""
  import jax

  import sap_jax.nnx as snnx
  from sap_jax import models, train
  from sap_jax import sharding as shd
  from tests import fake_data

  x, y = fake_data.blobs(96, 0, 3)
  config = train.TrainConfig(epochs=2, batch_size=32, learning_rate=0.1, seed=2)
  linen = models.get("mlp", 3, depth=1, width=8, batch_norm=True)
  rngs = train.run_rngs(config.seed)
  init = train.variables_of(
    train.create_train_state(linen, x[:1], config, rngs.init, steps_per_epoch=3)
  )
  twin = snnx.load_linen_variables(
    models.get("mlp", 3, api="nnx", in_features=2, depth=1, width=8, batch_norm=True), init
  )
  out = {}
  xs, ys = shd.shard_batch(x, mesh), shd.shard_batch(y, mesh)
  for name, m, (xa, ya) in (
    ("one", None, (x, y)),
    ("many", mesh, (x, y)),
    ("global", None, (xs, ys)),
  ):
    got = snnx.train_model(twin, xa, ya, config, x_val=x[:32], y_val=y[:32], progress=False, mesh=m)
    out[name] = {
      "history": got.history,
      "variables": _tree(snnx.variables_of(got.model)),
      "replicated": all(
        leaf.sharding.is_fully_replicated
        for leaf in jax.tree_util.tree_leaves(snnx.variables_of(got.model))
      ),
    }
  want = train.train_model(
    linen, x, y, config, x_val=x[:32], y_val=y[:32], progress=False, mesh=mesh
  )
  out["linen_many"] = {"history": want.history, "variables": _tree(want.variables)}
  return out


def main(out: str) -> None:
  import jax

  from sap_jax import sharding as shd

  assert jax.device_count() == 8, jax.devices()
  mesh = shd.data_mesh()
  res = {
    "curvature": curvature(mesh),
    "nnx": nnx_sap(mesh),
    "train": training(mesh),
  }
  with open(out, "w") as f:
    json.dump(res, f)


if __name__ == "__main__":
  main(sys.argv[1])
