"""The trusted set: training samples whose (noisy) labels the model is surest of.

The paper takes the N_trust samples with the lowest cross-entropy loss under the
trained model. The published code ranks by an input-curvature score instead (a
finite-difference estimate of how sharply the loss bends around the input: low
curvature = typical, likely correctly labelled), per class. Both are here; loss
is the default, class-balanced selection an option.

Scores (`SCORES`, lower = more trusted):

* ``"loss"`` (default, the paper): per-sample cross-entropy (`per_example_loss`).
* ``"curvature"``: `input_curvature`, mean over probes of the *squared* norm of the
  input-gradient difference of each sample's own loss: an estimate of h²‖H_x‖_F² per
  sample, independent of the batching.
* ``"curvature_published"``: `published_curvature`, the published code's estimator
  exactly: mean over 10 Rademacher probes (h = 1e-3) of the *norm* (not squared) of
  the input-gradient difference of the *batch-mean* loss, so a sample's score is divided
  by its batch's size. With it, `trusted_set` selects the published code's
  ``n // K + 1`` lowest-scoring samples of each class (`select_per_class`).

Loss stays the default because it is the paper's method; "curvature" is kept as the
batching-independent form of the curvature ranking (the two curvature scores give the
same order within one batch, up to the probes' randomness, since the norm is a
monotone function of the squared norm, but "curvature_published" scales each batch's
scores by 1/batch size, so a short last batch ranks differently).

Every score takes global arrays sharded over a mesh's data axis (`sap_jax.sharding`) as
well as host arrays: each device scores its own samples, and only the N scores cross
to the host, equal to one process's to float tolerance. The curvature scores draw
their probes per batch of consecutive samples, so on a mesh each device runs the very
batches one process runs that hold its samples, with their probes (`sharded_curvature`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from sap_jax import sharding as shd
from sap_jax.batching import padded_batches
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.hashable import hashable
from sap_jax.input_checks import check_labelled, check_labels
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
) -> np.ndarray:
  """Cross-entropy of every sample under the model (eval mode).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables.
    x: inputs (N, …): a host array, or a global array sharded over a mesh's data axis
      (`sap_jax.sharding.shard_batch`); then each device computes its own samples'
      losses and only the N losses cross to the host.
    y: integer labels (N,), the labels the model was trained on (a host array, or
      sharded like ``x``); None when ``x`` is a labelled source (`sap_jax.data.sources`,
      streamed: `sap_jax.streaming.losses`).
    batch_size: samples per jitted call (the last batch is padded, not recompiled;
      sharded ``x``: over all devices together).

  Returns:
    float32[N] losses.
  """
  if is_source(x):
    from sap_jax import streaming

    no_separate_labels(y)
    return streaming.losses(apply_fn, variables, x, batch_size=batch_size)
  if shd.is_global(x):
    return _sharded_losses(apply_fn, variables, x, y, batch_size)
  x, y = check_labelled(apply_fn, variables, x, y)
  y = y.astype(np.int32)
  fn = hashable(apply_fn)
  out = [
    np.asarray(_losses_jit(fn, variables, xb, yb))[:real]
    for (xb, yb), real in padded_batches(x, y, batch_size=batch_size)
  ]
  return np.concatenate(out).astype(np.float32)


def _sharded_losses(apply_fn: ApplyFn, variables: Any, x: jax.Array, y: Any, batch_size: int):
  """`per_example_loss` of a global array sharded over a data axis: every device runs the
  forward on its own samples only; the N losses (and the labels, for their checks) are
  the only things that reach the host."""
  mesh, axis = shd.data_axis_of(x)
  shd.check_divides(x.shape[0], mesh, axis, "per_example_loss x")
  x, y_host = check_labelled(apply_fn, variables, x, shd.to_host(y))
  y = y if shd.data_axis_of(y) == (mesh, axis) else shd.shard_batch(y_host, mesh, axis)
  y = y.astype(jnp.int32)
  variables = shd.replicate(variables, mesh)
  fn = hashable(apply_fn)
  out = np.empty(x.shape[0], np.float32)
  for (xb, yb), index in shd.sample_batches((x, y), batch_size):
    out[index] = shd.to_host(_losses_jit(fn, variables, xb, yb))
  return out


def _curvature(apply_fn, variables, x, y, key, h, num_probes):
  def grad_x(xx):
    return jax.grad(lambda z: jnp.sum(model_cross_entropy(apply_fn, variables, z, y)))(xx)

  g0 = grad_x(x)

  def probe(carry, k):
    r = jax.random.rademacher(k, x.shape, x.dtype)
    g1 = grad_x(x + h * r)
    return carry + jnp.sum((g1 - g0).reshape(len(x), -1) ** 2, axis=1), None

  total, _ = jax.lax.scan(probe, jnp.zeros(len(x)), jax.random.split(key, num_probes))
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
      (`sap_jax.sharding.shard_batch`); then each device scores its own samples, with
      the very probes one process draws (see `sharded_curvature`), and only the N
      scores cross to the host.
    y: integer labels (N,) (a host array, or sharded like ``x``).
    h: finite-difference step.
    num_probes: number of random probes averaged.
    seed: seed of the probes (batch i of ``batch_size`` consecutive samples uses
      ``fold_in(PRNGKey(seed), i)``).
    batch_size: samples per jitted call (sharded ``x``: the same batches, each device
      running ``batch_size`` rows per call).

  Returns:
    float32[N] curvature scores (lower = more trusted).
  """

  def step(fn, xb, yb, key, real):
    return curvature_of_batch("curvature", fn, variables, xb, yb, key, real, h, num_probes)

  return _batch_scores(
    "curvature", step, apply_fn, variables, x, y, h, num_probes, seed, batch_size
  )


def _batch_scores(kind, step, apply_fn, variables, x, y, h, num_probes, seed, batch_size):
  """The curvature score ``kind`` of every sample: `sharded_curvature` for a global
  array, else ``step(fn, xb, yb, key, real)`` on each padded batch of consecutive
  samples, batch i with ``key = fold_in(PRNGKey(seed), i)``."""
  if h <= 0 or num_probes < 1:
    raise ValueError(f"Need h > 0 and num_probes ≥ 1, got h={h}, num_probes={num_probes}.")
  if shd.is_global(x):
    return sharded_curvature(
      apply_fn,
      variables,
      x,
      y,
      kind,
      h=h,
      num_probes=num_probes,
      seed=seed,
      batch_size=batch_size,
    )
  x, y = check_labelled(apply_fn, variables, x, y)
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int32)
  fn = hashable(apply_fn)
  key = jax.random.PRNGKey(seed)
  out = []
  for i, ((xb, yb), real) in enumerate(padded_batches(x, y, batch_size=batch_size)):
    out.append(np.asarray(step(fn, xb, yb, jax.random.fold_in(key, i), real))[:real])
  return np.concatenate(out).astype(np.float32)


def rademacher_probes(key: jax.Array, num_probes: int, shape: tuple[int, ...]) -> jax.Array:
  """The ±1 probes `published_curvature` draws for one batch: (num_probes, *shape) float32.

  Batch ``i`` (in the order of `sap_jax.batching.padded_batches`) uses
  ``key = jax.random.fold_in(jax.random.PRNGKey(seed), i)``.
  """
  return jax.random.rademacher(key, (num_probes, *shape), jnp.float32)


def _published_curvature(apply_fn, variables, x, y, probes, real, h):
  """Published estimator on one (padded) batch: only the first ``real`` samples count."""
  mask = (jnp.arange(len(x)) < real).astype(x.dtype)
  return _published_masked(apply_fn, variables, x, y, probes, mask, real, h)


def _published_masked(apply_fn, variables, x, y, probes, mask, real, h):
  """Published estimator on one batch of ``real`` samples, those where ``mask`` is 1."""

  def mean_loss(z):
    # The batch-mean cross-entropy over the real samples (PyTorch's F.cross_entropy).
    return jnp.sum(model_cross_entropy(apply_fn, variables, z, y) * mask) / real

  def probe(carry, v):
    v = h * (v + 1e-7)  # the published code's probe: h · (±1 + 1e-7)
    diff = jax.grad(lambda z: mean_loss(z + v) - mean_loss(z))(x)
    return carry + jnp.linalg.norm(diff.reshape(len(x), -1), axis=1), None

  total, _ = jax.lax.scan(probe, jnp.zeros(len(x), x.dtype), probes)
  return total / probes.shape[0]


_published_curvature_jit = jax.jit(_published_curvature, static_argnums=0)


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
      then each device scores its own samples, each in its global batch of one process,
      with that batch's probes and size (see `sharded_curvature`), and only the N scores
      cross to the host.
    y: integer labels (N,) (a host array, or sharded like ``x``).
    h: finite-difference step.
    num_probes: number of probes averaged (published: 10).
    seed: seed of the probes (batch i uses ``fold_in(PRNGKey(seed), i)``).
    batch_size: samples per batch (the mean of the loss runs over a batch; sharded
      ``x``: the same global batches, each device running ``batch_size`` rows).

  Returns:
    float32[N] scores (lower = more trusted).
  """

  def step(fn, xb, yb, key, real):
    return curvature_of_batch(
      "curvature_published", fn, variables, xb, yb, key, real, h, num_probes
    )

  return _batch_scores(
    "curvature_published", step, apply_fn, variables, x, y, h, num_probes, seed, batch_size
  )


def curvature_of_batch(kind, apply_fn, variables, x, y, key, real, h, num_probes):
  """One batch's curvature scores (``kind``: "curvature" or "curvature_published"), the
  batch padded to its compiled shape with only its first ``real`` samples counting, and
  ``key`` its probes' key (batch i: ``fold_in(PRNGKey(seed), i)``): the step of
  `input_curvature` and `published_curvature`, and of their streamed form
  (`sap_jax.streaming.scores`). A global batch on a mesh gives one device's scores."""
  if kind == "curvature":
    return _curvature_jit(apply_fn, variables, x, y, key, h, num_probes)
  probes = rademacher_probes(key, num_probes, x.shape)
  return _published_curvature_jit(apply_fn, variables, x, y, probes, jnp.float32(real), h)


def _sharded_curvature_body(apply_fn, kind, num_probes, bs, n, share):
  """shard_map body: one device's rows of its current global batch, scored.

  ``offset``: where the batch starts in this device's samples (rows outside
  ``[0, share)`` belong to other devices and are masked), ``batch``: its index.
  """

  def body(variables, x, y, offset, batch, key, h):
    rows = offset[0] + jnp.arange(bs)
    valid = (rows >= 0) & (rows < share)
    index = jnp.clip(rows, 0, share - 1)
    xb = jnp.take(x, index, axis=0).astype(jnp.float32)
    yb = jnp.take(y, index, axis=0).astype(jnp.int32)
    k = jax.random.fold_in(key, batch[0])
    if kind == "curvature":
      return _curvature(apply_fn, variables, xb, yb, k, h, num_probes)
    probes = rademacher_probes(k, num_probes, xb.shape)
    real = jnp.minimum(bs, n - batch[0] * bs).astype(jnp.float32)
    return _published_masked(apply_fn, variables, xb, yb, probes, valid.astype(xb.dtype), real, h)

  return body


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _sharded_curvature_jit(
  apply_fn, kind, num_probes, bs, n, mesh, axis, variables, x, y, offset, batch, key, h
):
  share = x.shape[0] // shd.num_shards(mesh, axis)
  body = _sharded_curvature_body(apply_fn, kind, num_probes, bs, n, share)
  spec = P(axis)
  specs = (P(), P(axis, *([None] * (x.ndim - 1))), spec, spec, spec, P(), P())
  fn = jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=spec, check_vma=False)
  return fn(variables, x, y, offset, batch, key, h)


def curvature_schedule(n: int, shards: int, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Which global batch each device scores at each step of `sharded_curvature`.

  One process cuts N samples into consecutive batches of ``b = min(batch_size, N)``;
  device d holds samples ``[d·s, (d+1)·s)`` (s = N / shards), which meet batches
  ``⌊d·s / b⌋ … ⌊((d+1)·s − 1) / b⌋``. Step t gives device d the t-th of them (a device
  with fewer gets an empty step: offset s, batch 0).

  Returns:
    Per step ``(offset, batch)``, both int32[shards]: where the batch starts in device
    d's own samples (``batch · b − d·s``, negative when it began on the previous
    device), and the batch's index.
  """
  share, b = n // shards, min(batch_size, n)
  d = np.arange(shards)
  first, last = d * share // b, ((d + 1) * share - 1) // b
  out = []
  for t in range(int((last - first).max()) + 1):
    batch = first + t
    active = batch <= last
    offset = np.where(active, batch * b - d * share, share).astype(np.int32)
    out.append((offset, np.where(active, batch, 0).astype(np.int32)))
  return out


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
  to one process's scores of the same samples.

  Both estimators draw their probes per batch of ``b = min(batch_size, N)`` consecutive
  samples (batch i: ``fold_in(PRNGKey(seed), i)``, a (num_probes, b, …) draw, row r for
  the batch's r-th sample), and the published one divides by the batch's size. So each
  device runs, step by step (`curvature_schedule`), the global batches that meet its own
  samples: the b rows of batch i as one process lays them out, those of other devices
  masked (a local gather within the device; no sample crosses devices), the same
  probes drawn on the device from the same key, the true batch size as the mean's
  divisor. A sample's score depends only on its own row (an eval-mode forward in which
  no sample sees another; one whose outputs mixed samples would make even one
  process's scores depend on its padding), so every score equals one process's to float
  tolerance (bit-identical on CPU in the tests). Cost: each device runs at most
  ⌈s / b⌉ + 1 batches of b rows for its s samples (b ≤ s wastes at most two batches
  per device; b > s runs b rows for s), and only the scores (b per device per step)
  cross to the host.

  Args:
    apply_fn, variables: the model (eval-mode forward).
    x: (N, …) inputs sharded over a mesh's data axis, N a multiple of its devices.
    y: (N,) integer labels, sharded like ``x`` or a host array.
    kind: "curvature" or "curvature_published".
    h, num_probes, seed, batch_size: as `input_curvature` / `published_curvature`.

  Returns:
    float32[N] scores, on the host of every process.
  """
  if kind not in ("curvature", "curvature_published"):
    raise ValueError(f'kind must be "curvature" or "curvature_published", got {kind!r}.')
  found = shd.data_axis_of(x)
  if found is None:
    raise ValueError(
      "sharded_curvature needs a global array sharded over a mesh's data axis "
      "(sap_jax.sharding.shard_batch); for a host array use input_curvature or "
      "published_curvature."
    )
  mesh, axis = found
  n = x.shape[0]
  shards = shd.num_shards(mesh, axis)
  shd.check_divides(n, mesh, axis, f"{kind} x")
  if batch_size < 1:
    raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
  x, y_host = check_labelled(apply_fn, variables, x, shd.to_host(y))
  y = y if shd.data_axis_of(y) == (mesh, axis) else shd.shard_batch(y_host, mesh, axis)
  variables = shd.replicate(variables, mesh)
  key = shd.replicate(jax.random.PRNGKey(seed), mesh)
  hh = shd.replicate(np.float32(h), mesh)
  fn, b = hashable(apply_fn), min(batch_size, n)
  static = (fn, kind, num_probes, b, n, mesh, axis)
  steps = curvature_schedule(n, shards, batch_size)
  got = [
    _sharded_curvature_jit(
      *static,
      variables,
      x,
      y,
      shd.shard_starts(o, mesh, axis),
      shd.shard_starts(i, mesh, axis),
      key,
      hh,
    )
    for o, i in steps
  ]
  share, out = n // shards, np.empty(n, np.float32)
  for (offset, _), scores in zip(steps, got):
    rows = offset[:, None] + np.arange(b)  # (shards, b): rows in each device's samples
    keep = (rows >= 0) & (rows < share)
    samples = rows + np.arange(shards)[:, None] * share
    out[samples[keep]] = shd.to_host(scores).reshape(shards, b)[keep]
  return out


JITTED = {
  "trusted.losses": _losses_jit,
  "trusted.curvature": _curvature_jit,
  "trusted.published_curvature": _published_curvature_jit,
  "trusted.sharded_curvature": _sharded_curvature_jit,
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
) -> np.ndarray:
  """Per-sample scores to rank by (lower = more trusted), one of `SCORES`.

  ``x``, ``y``: host arrays, or global arrays sharded over a mesh's data axis (every
  score then runs where the samples are and equals one process's; only the N scores
  cross to the host). "curvature_published" uses ``min(batch_size, 128)`` samples per
  batch (its scores depend on the batching; see `published_curvature`).
  """
  if score == "loss":
    return per_example_loss(apply_fn, variables, x, y, batch_size=batch_size)
  if score == "curvature":
    return input_curvature(apply_fn, variables, x, y, seed=seed, batch_size=min(batch_size, 256))
  if score == "curvature_published":
    return published_curvature(
      apply_fn, variables, x, y, seed=seed, batch_size=min(batch_size, 128)
    )
  raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")


def rank_by_score(scores: Any, *, descending: bool = False) -> np.ndarray:
  """Indices that order ``scores`` (ascending, or descending), ties broken by index.

  The one ranking used by `select_trusted` and by the baselines' lowest-/highest-
  loss sets.

  Args:
    scores: float[N] per-sample scores (e.g. losses).
    descending: highest score first.

  Returns:
    int64[N] indices.

  Raises:
    ValueError: scores not 1-D, or holding NaN/Inf.
  """
  scores = np.asarray(scores, np.float64)
  if scores.ndim != 1:
    raise ValueError(f"scores must be 1-D (one per sample), got shape {scores.shape}.")
  if not np.all(np.isfinite(scores)):
    raise ValueError("scores contain NaN or Inf; the model's losses are not finite.")
  return np.lexsort((np.arange(len(scores)), -scores if descending else scores)).astype(np.int64)


def select_trusted(
  scores: Any,
  labels: Any,
  n: int,
  *,
  class_balanced: bool = False,
) -> np.ndarray:
  """Indices of the ``n`` samples with the lowest scores (e.g. losses).

  Args:
    scores: float[N] per-sample scores, lower = more trusted.
    labels: int[N] (noisy) labels, used for class-balanced selection (a host array or
      a sharded global array).
    n: how many samples to select, 1 ≤ n ≤ N.
    class_balanced: split ``n`` evenly over the classes present in ``labels``
      (the lowest-scoring n // K of each class, the remainder to the next-lowest
      samples overall; a class with too few samples gives all it has and the rest
      is filled the same way).

  Returns:
    int64 indices, sorted by score (ties broken by index), no duplicates.
  """
  scores = np.asarray(scores, np.float64)
  labels = shd.to_host(labels)  # a sharded global array is all-gathered (N labels)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(
      f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}."
    )
  if not 1 <= n <= len(scores):
    raise ValueError(
      f"Cannot select n={n} trusted samples from {len(scores)}: choose "
      f"1 ≤ n ≤ {len(scores)} (e.g. --n-trusted {min(1000, len(scores))})."
    )
  order = rank_by_score(scores)
  if not class_balanced:
    return order[:n].astype(np.int64)
  labels = check_labels(labels, len(scores), None, "labels")
  classes = np.unique(labels)
  share = n // len(classes)
  chosen = np.zeros(len(scores), bool)
  for c in classes:
    in_class = order[labels[order] == c]
    chosen[in_class[:share]] = True
  rest = order[~chosen[order]][: n - int(chosen.sum())]
  chosen[rest] = True
  return order[chosen[order]].astype(np.int64)


def select_per_class(scores: Any, labels: Any, per_class: int) -> np.ndarray:
  """The ``per_class`` lowest-scoring samples of every class in ``labels`` (all of a
  smaller class), the published code's class-balanced selection.

  Returns:
    int64 indices sorted by score (ties broken by index), no duplicates.
  """
  scores = np.asarray(scores, np.float64)
  labels = shd.to_host(labels)  # a sharded global array is all-gathered (N labels)
  if scores.ndim != 1 or labels.shape != scores.shape:
    raise ValueError(
      f"scores and labels must be 1-D of equal length, got {scores.shape} and {labels.shape}."
    )
  if per_class < 1:
    raise ValueError(f"per_class must be ≥ 1, got {per_class}.")
  order = rank_by_score(scores)
  chosen = np.zeros(len(scores), bool)
  for c in np.unique(labels):
    chosen[order[labels[order] == c][:per_class]] = True
  return order[chosen[order]].astype(np.int64)


def trusted_set(
  apply_fn: ApplyFn,
  variables: Any,
  x: Any,
  y: Any,
  n: int,
  *,
  score: str = "loss",
  class_balanced: bool = False,
  batch_size: int = 512,
  seed: int = 0,
) -> np.ndarray:
  """Scores the samples (`trust_scores`) and selects the trusted set.

  "loss" and "curvature" take the ``n`` lowest (`select_trusted`, per class with
  ``class_balanced``); "curvature_published" follows the published code: the
  ``n // K + 1`` lowest of each of the K classes (`select_per_class`, always class
  balanced, ``K · (n // K + 1)`` samples when every class has enough).

  Args:
    apply_fn, variables: the model.
    x, y: the candidates and the labels to score them with (the noisy training labels
      in the honest protocol; the clean ones for the published code's oracle): host
      arrays, or global arrays sharded over a mesh's data axis (`trust_scores`).
    n: trusted-set size, 1 ≤ n ≤ len(x).
    score: one of `SCORES`.
    class_balanced: per-class selection ("loss", "curvature").
    batch_size: samples per scoring call.
    seed: seed of the curvature probes.

  Returns:
    int64 indices into ``x``.
  """
  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  if is_source(x):
    from sap_jax import streaming

    no_separate_labels(y)
    return streaming.trusted_indices(
      apply_fn,
      variables,
      x,
      n,
      score=score,
      class_balanced=class_balanced,
      batch_size=batch_size,
      seed=seed,
    )
  if not 1 <= n <= len(x):
    raise ValueError(f"Cannot select n={n} trusted samples from {len(x)}: choose 1 ≤ n ≤ {len(x)}.")
  scores = trust_scores(apply_fn, variables, x, y, score=score, batch_size=batch_size, seed=seed)
  y = shd.to_host(y)  # N labels, for the ranking on the host
  if score == "curvature_published":
    return select_per_class(scores, y, n // len(np.unique(y)) + 1)
  return select_trusted(scores, y, n, class_balanced=class_balanced)
