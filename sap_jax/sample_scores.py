"""The per-sample scores that rank the trusted set (lower = more trusted).

The paper takes the N_trust samples with the lowest cross-entropy loss under the
trained model; the published code ranks by an input-curvature score instead. This
module owns the scores and their compiled programs (`JITTED`); the selection of the
trusted set from them is `sap_jax.trusted`.

Scores (`SCORES`, lower = more trusted):

* ``"loss"`` (default, the paper): per-sample cross-entropy (`per_example_loss`).
* ``"curvature"``: `input_curvature`, mean over probes of the *squared* norm of the
  input-gradient difference of each sample's own loss: an estimate of h²‖H_x‖_F² per
  sample, independent of the batching.
* ``"curvature_published"``: `published_curvature`, the published code's estimator
  exactly: mean over 10 Rademacher probes (h = 1e-3) of the *norm* (not squared) of
  the input-gradient difference of the *batch-mean* loss, so a sample's score is divided
  by its batch's size. With it, `sap_jax.trusted.trusted_set` selects the published code's
  ``n // K + 1`` lowest-scoring samples of each class (`sap_jax.trusted.select_per_class`).

Loss stays the default because it is the paper's method; "curvature" is kept as the
batching-independent form of the curvature ranking (the two curvature scores give the
same order within one batch, up to the probes' randomness, since the norm is a
monotone function of the squared norm, but "curvature_published" scales each batch's
scores by 1/batch size, so a short last batch ranks differently).

Every score takes global arrays sharded over a mesh's data axis (`sap_jax.sharding`) as
well as host arrays, through one path: the feeder's batches
(`sap_jax.data.array_feeder.feed_arrays`, cut on the devices for a global array), each device
scoring its share of every batch; only the N scores cross to the host, equal to one
process's to float tolerance. The curvature scores draw their probes per batch of
consecutive samples, so every device count runs the very batches one process runs, with
their probes (`curvature_layout`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.array_feeder import as_input, feed_arrays, labels_on_host, mesh_of
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.hashable import hashable
from sap_jax.input_checks import check_labelled
from sap_jax.losses import model_cross_entropy
from sap_jax.types import ApplyFn

# Module-level: one compilation per (model, batch shape), reused by later calls.
_losses_jit = jax.jit(model_cross_entropy, static_argnums=0)


def per_example_loss(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any = None,
  *,
  batch_size: int = 512,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Cross-entropy of every sample under the model (eval mode).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables.
    x: inputs (N, …): a host array, or a global array sharded over a mesh's data axis
      (`sap_jax.sharding.shard_batch`); then each device computes its share of every
      batch (`sap_jax.data.array_feeder.feed_arrays`) and only the N losses cross to the host.
    y: integer labels (N,), the labels the model was trained on (a host array, or
      sharded like ``x``); None when ``x`` is a labelled source (`sap_jax.data.sources`,
      streamed: `sap_jax.streaming.losses`).
    batch_size: samples per jitted call (the last batch is padded, not recompiled;
      sharded ``x``: over all devices together).
    mesh: the devices that score host arrays or a source (each process reads its own rows
      of every batch); default one local device. A global array is read on its own mesh.

  Returns:
    float32[N] losses.
  """
  if is_source(x):
    from sap_jax import streaming

    no_separate_labels(y)
    return streaming.losses(apply_fn, variables, x, batch_size=batch_size, mesh=mesh)
  x, y = check_labelled(apply_fn, variables, x, labels_on_host(y))
  mesh = mesh_of(x, mesh)
  variables = shd.replicate(variables, mesh)
  fn = hashable(apply_fn)
  outs = [
    (_losses_jit(fn, variables, batch.x, batch.y), batch.start, batch.real)
    for batch in feed_arrays(x, y, batch_size, mesh=mesh, what="x/y")
  ]
  out = np.empty(x.shape[0], np.float32)
  for values, start, real in outs:
    out[start : start + real] = shd.to_host(values)[:real]
  return out


def _curvature(apply_fn, variables, x, y, keys, h, num_probes):
  """`input_curvature` of a batch of ``len(keys)`` blocks side by side (`curvature_layout`),
  block j's probes drawn from ``keys[j]`` for its rows alone."""

  def grad_x(xx):
    return jax.grad(lambda z: jnp.sum(model_cross_entropy(apply_fn, variables, z, y)))(xx)

  g0 = grad_x(x)
  rows = len(x) // len(keys)

  def probe(carry, k):
    draw = jax.vmap(lambda kj: jax.random.rademacher(kj, (rows, *x.shape[1:]), x.dtype))(k)
    g1 = grad_x(x + h * draw.reshape(x.shape))
    return carry + jnp.sum((g1 - g0).reshape(len(x), -1) ** 2, axis=1), None

  probe_keys = jax.vmap(lambda kj: jax.random.split(kj, num_probes))(keys)  # (blocks, P)
  total, _ = jax.lax.scan(probe, jnp.zeros(len(x)), jnp.swapaxes(probe_keys, 0, 1))
  return total / num_probes


_curvature_jit = jax.jit(_curvature, static_argnums=(0, 6))


def input_curvature(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  h: float = 1e-3,
  num_probes: int = 10,
  seed: int = 0,
  batch_size: int = 256,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Finite-difference input-curvature score of every sample.

  For Rademacher probes v ∈ {±1}^shape(x):

      curv(x) = mean_v ‖∇ₓ ℓ(x + h v, y) − ∇ₓ ℓ(x, y)‖²  (≈ h² ‖H_x v‖²),

  the estimator of Garg, Roy et al. ("Memorization through the lens of curvature
  of loss function around samples", ICML 2024) that SAP's published code uses to
  rank samples. High curvature marks atypical or mislabelled samples.

  Args:
    apply_fn: eval-mode forward.
    variables: model variables.
    x: inputs (N, …): a host array, or a global array sharded over a mesh's data axis
      (`sap_jax.sharding.shard_batch`); then each device scores its share of every
      batch, with the very probes one process draws (`curvature_layout`), and only the
      N scores cross to the host.
    y: integer labels (N,) (a host array, or sharded like ``x``).
    h: finite-difference step.
    num_probes: number of random probes averaged.
    seed: seed of the probes (batch i of ``batch_size`` consecutive samples uses
      ``fold_in(PRNGKey(seed), i)``).
    batch_size: samples per jitted call (sharded ``x``: the same batches, each device
      running ``batch_size`` rows per call).
    mesh: the devices that score host arrays (the same probes and scores on any mesh);
      default one local device. A global array is read on its own mesh.

  Returns:
    float32[N] curvature scores (lower = more trusted).
  """

  def step(fn, variables, xb, yb, keys, reals):
    return curvature_of_batch("curvature", fn, variables, xb, yb, keys, reals, h, num_probes)

  return _batch_scores(
    "curvature", step, apply_fn, variables, x, y, h, num_probes, seed, batch_size, mesh
  )


def _batch_scores(kind, step, apply_fn, variables, x, y, h, num_probes, seed, batch_size, mesh):
  """The curvature score ``kind`` of every sample: ``step(fn, variables, xb, yb, keys,
  reals)`` on each feeder batch of `curvature_layout` (batches of consecutive samples,
  batch i with ``key = fold_in(PRNGKey(seed), i)``, one per device), wherever ``x``
  lives."""
  if h <= 0 or num_probes < 1:
    raise ValueError(f"Need h > 0 and num_probes ≥ 1, got h={h}, num_probes={num_probes}.")
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  x, y = check_labelled(apply_fn, variables, x, labels_on_host(y))
  x = as_input(x)
  x = x if x.dtype == np.float32 else x.astype(np.float32)
  mesh = mesh_of(x, mesh)
  variables = shd.replicate(variables, mesh)
  n, blocks = x.shape[0], shd.num_shards(mesh)
  stream, size, rows = curvature_layout(n, batch_size, blocks)
  fn = hashable(apply_fn)
  key = jax.random.PRNGKey(seed)
  outs = []
  for t, batch in enumerate(feed_arrays(x, y, size, mesh=mesh, indices=stream, what="x/y")):
    keys, reals, real = layout_batch(key, t, blocks, rows, n)
    outs.append((step(fn, variables, batch.x, batch.y, keys, reals), real))
  return np.concatenate([shd.to_host(v)[:real] for v, real in outs]).astype(np.float32)


def curvature_layout(n: int, batch_size: int, blocks: int) -> tuple[np.ndarray, int, int]:
  """The stream that gives the feeder the curvature scores' batches on ``blocks`` devices.

  Both curvature estimators draw their probes per batch of ``b = min(batch_size, n)``
  consecutive samples (batch i: ``fold_in(PRNGKey(seed), i)``, row r's probe for the
  batch's r-th sample), and the published one divides by the batch's size, so every
  device count must score those very batches: batch i is samples ``i·b … i·b + b − 1``
  (the last one padded with sample 0, as `sap_jax.batching.padded_batches` pads). A
  feeder batch holds ``blocks`` of them side by side, one per device (`layout_batch`), so
  every device runs one process's program on one process's batch; the last feeder batch
  is filled up with batches of sample 0 that count nothing.

  Returns:
    ``(stream, blocks · b, b)``: the source indices, to feed in batches of ``blocks · b``.
  """
  b = min(batch_size, n)
  count = -(-n // b)  # one process's batches
  batches = -(-count // blocks) * blocks
  positions = np.arange(batches)[:, None] * b + np.arange(b)
  return np.where(positions < n, positions, 0).reshape(-1), blocks * b, b


def rademacher_probes(key: jax.Array, num_probes: int, shape: tuple[int, ...]) -> jax.Array:
  """The ±1 probes `published_curvature` draws for one batch: (num_probes, *shape) float32.

  Batch ``i`` (in the order of `sap_jax.batching.padded_batches`) uses
  ``key = jax.random.fold_in(jax.random.PRNGKey(seed), i)``.
  """
  return jax.random.rademacher(key, (num_probes, *shape), jnp.float32)


def _published_curvature(apply_fn, variables, x, y, keys, reals, h, num_probes):
  """Published estimator on a batch of ``len(keys)`` blocks side by side
  (`curvature_layout`): block j's probes drawn from ``keys[j]`` for its rows alone
  (`rademacher_probes`), its first ``reals[j]`` rows counting, its loss the mean over
  them (a block of none adds nothing)."""
  blocks = len(keys)
  rows = len(x) // blocks
  probes = jax.vmap(lambda k: rademacher_probes(k, num_probes, (rows, *x.shape[1:])))(keys)
  probes = jnp.swapaxes(probes, 0, 1).reshape((num_probes, *x.shape))
  mask = (jnp.arange(rows)[None, :] < reals[:, None]).reshape(-1).astype(x.dtype)
  return _published_masked(apply_fn, variables, x, y, probes, mask, reals, h)


def _published_masked(apply_fn, variables, x, y, probes, mask, reals, h):
  """Published estimator on a batch of ``len(reals)`` blocks side by side, block j of
  ``reals[j]`` samples (those where ``mask`` is 1)."""
  blocks = len(reals)

  def mean_loss(z):
    # Each block's mean cross-entropy over its real samples (PyTorch's F.cross_entropy).
    losses = (model_cross_entropy(apply_fn, variables, z, y) * mask).reshape(blocks, -1)
    return jnp.sum(jnp.sum(losses, axis=1) / jnp.maximum(reals, 1.0))

  def probe(carry, v):
    v = h * (v + 1e-7)  # the published code's probe: h · (±1 + 1e-7)
    diff = jax.grad(lambda z: mean_loss(z + v) - mean_loss(z))(x)
    return carry + jnp.linalg.norm(diff.reshape(len(x), -1), axis=1), None

  total, _ = jax.lax.scan(probe, jnp.zeros(len(x), x.dtype), probes)
  return total / probes.shape[0]


_published_curvature_jit = jax.jit(_published_curvature, static_argnums=(0, 7))


def published_curvature(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  h: float = 1e-3,
  num_probes: int = 10,
  seed: int = 0,
  batch_size: int = 128,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """The published code's input-curvature score of every sample, exactly.

  For each batch B (consecutive samples, the last one short) and probe
  v = h · (r + 1e-7), r ∈ {±1}^shape(x) Rademacher (`rademacher_probes`):

      score(x_i) = mean_v ‖∇_{x_i} [L_B(x + v) − L_B(x)]‖,   L_B = (1/|B|) Σ_{j∈B} ℓ(x_j, y_j),

  the ``regr_estimate`` of ``get_regularized_curvature_for_batch`` in
  github.com/sangamesh-kodge/SAP (``h=1e-3, niter=10``). The batch-mean loss makes
  every score of a batch of size |B| carry a factor 1/|B|, so the scores depend on
  ``batch_size`` (the published code uses its training batch size).

  Args:
    apply_fn: eval-mode forward.
    variables: model variables.
    x: inputs (N, …): a host array, or a global array sharded over a mesh's data axis;
      then each device scores its share of every batch of one process, with that batch's
      probes and size (`curvature_layout`), and only the N scores cross to the host.
    y: integer labels (N,) (a host array, or sharded like ``x``).
    h: finite-difference step.
    num_probes: number of probes averaged (published: 10).
    seed: seed of the probes (batch i uses ``fold_in(PRNGKey(seed), i)``).
    batch_size: samples per batch (the mean of the loss runs over a batch; sharded
      ``x``: the same global batches, each device running ``batch_size`` rows).
    mesh: as `input_curvature`.

  Returns:
    float32[N] scores (lower = more trusted).
  """

  def step(fn, variables, xb, yb, keys, reals):
    return curvature_of_batch(
      "curvature_published", fn, variables, xb, yb, keys, reals, h, num_probes
    )

  return _batch_scores(
    "curvature_published", step, apply_fn, variables, x, y, h, num_probes, seed, batch_size, mesh
  )


def curvature_of_batch(kind, apply_fn, variables, x, y, key, real, h, num_probes):
  """One batch's curvature scores (``kind``: "curvature" or "curvature_published"): the
  step of `input_curvature` and `published_curvature`, and of their streamed form
  (`sap_jax.streaming.scores`).

  ``key`` and ``real``: the probes' key (batch i: ``fold_in(PRNGKey(seed), i)``) and how
  many of the batch's first samples count, the batch padded to its compiled shape. Or
  ``(blocks,)`` keys and counts: the batch is then ``blocks`` such batches side by side
  (`curvature_layout`: one per device of a mesh), each scored as if alone."""
  keys = jnp.reshape(key, (-1, *jnp.shape(key)[-1:]))
  if kind == "curvature":
    return _curvature_jit(apply_fn, variables, x, y, keys, h, num_probes)
  reals = jnp.reshape(jnp.asarray(real, jnp.float32), (-1,))
  return _published_curvature_jit(apply_fn, variables, x, y, keys, reals, h, num_probes)


def layout_batch(
  key: jax.Array, t: int, blocks: int, rows: int, n: int
) -> tuple[jax.Array, np.ndarray, int]:
  """Batch ``t`` of `curvature_layout`: its blocks' keys (``fold_in(key, i)`` for the
  batch i of ``rows`` samples each holds), their counts of real samples, and how many of
  its first rows are real samples (``start = t · blocks · rows`` onward)."""
  ids = t * blocks + np.arange(blocks)
  reals = np.clip(n - ids * rows, 0, rows)
  return _fold_in_each(key, ids.astype(np.uint32)), reals, int(reals.sum())


_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(None, 0)))


def sharded_curvature(
  apply_fn: ApplyFn,
  variables: Any,
  x: jax.Array,
  y: Any,
  kind: str,
  *,
  h: float = 1e-3,
  num_probes: int = 10,
  seed: int = 0,
  batch_size: int = 256,
) -> np.ndarray:
  """`input_curvature` (``kind="curvature"``) or `published_curvature`
  (``"curvature_published"``) of a global array sharded over a mesh's data axis, equal
  to one process's scores of the same samples: the batches of `curvature_layout`, each
  spread over the devices.

  Args:
    apply_fn, variables: the model (eval-mode forward).
    x: (N, …) inputs sharded over a mesh's data axis.
    y: (N,) integer labels, sharded like ``x`` or a host array.
    kind: "curvature" or "curvature_published".
    h, num_probes, seed, batch_size: as `input_curvature` / `published_curvature`.

  Returns:
    float32[N] scores, on the host of every process.
  """
  if kind not in ("curvature", "curvature_published"):
    raise ValueError(f'kind must be "curvature" or "curvature_published", got {kind!r}.')
  if shd.data_axis_of(x) is None:
    raise ValueError(
      "sharded_curvature needs a global array sharded over a mesh's data axis "
      "(sap_jax.sharding.shard_batch); for a host array use input_curvature or "
      "published_curvature."
    )
  score = input_curvature if kind == "curvature" else published_curvature
  return score(
    apply_fn, variables, x, y, h=h, num_probes=num_probes, seed=seed, batch_size=batch_size
  )


JITTED = {
  "trusted.losses": _losses_jit,
  "trusted.curvature": _curvature_jit,
  "trusted.published_curvature": _published_curvature_jit,
}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


SCORES = ("loss", "curvature", "curvature_published")


def trust_scores(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  *,
  score: str = "loss",
  batch_size: int = 512,
  seed: int = 0,
  mesh: Mesh | None = None,
) -> np.ndarray:
  """Per-sample scores to rank by (lower = more trusted), one of `SCORES`.

  ``x``, ``y``: host arrays, or global arrays sharded over a mesh's data axis (every
  score then runs where the samples are and equals one process's; only the N scores
  cross to the host). "curvature_published" uses ``min(batch_size, 128)`` samples per
  batch (its scores depend on the batching; see `published_curvature`). ``mesh``: the
  devices that score host arrays (default one local device; the same scores on any).
  """
  if score == "loss":
    return per_example_loss(apply_fn, variables, x, y, batch_size=batch_size, mesh=mesh)
  if score == "curvature":
    size = min(batch_size, 256)
    return input_curvature(apply_fn, variables, x, y, seed=seed, batch_size=size, mesh=mesh)
  if score == "curvature_published":
    size = min(batch_size, 128)
    return published_curvature(apply_fn, variables, x, y, seed=seed, batch_size=size, mesh=mesh)
  raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
