"""SAP's phases over a data source, each one pass through the feeder.

Every phase here reads a random-access source (`sap_jax.data.sources`) through
`sap_jax.data.feeder.feed`, so the samples are never held together: memory is one batch
(plus the feeder's prefetch) and what the phase accumulates, whatever the number of
samples. The public entry points (`sap_jax.evaluate`, `sap_jax.predict_logits`,
`sap_jax.per_example_loss`, `sap_jax.run_sap`) come here when given a source instead of
arrays; the functions are usable directly too.

* `losses` / `scores`: per-sample cross-entropy, or a curvature score, of a source (N
  floats, in source order; or handed over batch by batch).
* `trusted_indices` (`lowest_loss`): the trusted set by a streaming top-k over the scored
  stream (`sap_jax.topk.LowestK`; per class for class-balanced and published
  selection): O(n_trusted · K) memory.
* `stats_batches`: the trusted samples read by index, as the batches of
  `sap_jax.activation_stats` (host batches on one device, `LocalBatch`es on a mesh).
* `evaluate` / `predict_logits`: sums over the stream.
* `score_alphas`: every batch scored under the unchanged model and every α (one plain
  forward each, in one compiled step), so an α sweep reads each split once.

The whole recipe on sources is `sap_jax.source_pipeline.run_sap`.

Equality with the in-memory run: on the same data, the same trusted indices (ties broken
by index as `sap_jax.trusted.select_trusted`), the same statistics to float tolerance
(the same samples in the same order, the same padding and masking), so the same α and the
same corrected variables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from sap_jax import sharding as shd
from sap_jax.data.array_feeder import stats_batch
from sap_jax.data.feed_layout import Batch, checked_mesh
from sap_jax.data.feeder import feed
from sap_jax.data.sources import (
  first_input,
  source_length,
)
from sap_jax.forward_checks import check_logits_output, output_width
from sap_jax.hashable import hashable
from sap_jax.losses import cross_entropy, model_cross_entropy
from sap_jax.topk import LowestK
from sap_jax.types import ApplyFn, Variables


def num_outputs(apply_fn: ApplyFn, variables: Variables, source: Any, what: str) -> int:
  """K, the model's outputs, from a shape-only trace on the source's first input."""
  source_length(source, what)
  return output_width(apply_fn, variables, first_input(source, what))


def _placed(variables: Variables, mesh: Mesh | None) -> tuple[Variables, Mesh]:
  mesh = checked_mesh(mesh)
  return shd.replicate(variables, mesh), mesh


@functools.partial(jax.jit, static_argnums=0)
def _losses_step(apply_fn, variables, x, y):
  return model_cross_entropy(apply_fn, variables, x, y)


def _host(x: jax.Array) -> np.ndarray:
  return shd.to_host(x)


def losses(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  *,
  batch_size: int = 512,
  mesh: Mesh | None = None,
  workers: int = 0,
  on_batch: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray | None:
  """Cross-entropy of every sample of ``source`` under its label (eval mode).

  Args:
    apply_fn, variables: the model.
    source: a labelled source.
    batch_size: samples per global batch.
    mesh: the devices (default one); each process reads its own part of every batch.
    workers: grain worker processes.
    on_batch: if given, called with each batch's ``(losses, indices, labels)`` (the real
      samples only, host arrays on every process) and nothing is kept: the streaming
      form (`lowest_loss`). Else the N losses are returned.

  Returns:
    float32[N] losses in source order, or None with ``on_batch``.
  """
  n = source_length(source, "source")
  k = num_outputs(apply_fn, variables, source, "source")
  variables, mesh = _placed(variables, mesh)
  fn = hashable(apply_fn)
  out = None if on_batch is not None else np.empty(n, np.float32)
  for batch in feed(source, batch_size, mesh=mesh, num_classes=k, workers=workers):
    values = _host(_losses_step(fn, variables, batch.x, batch.y))[: batch.real]
    index = _host(batch.index)[: batch.real]
    if on_batch is None:
      out[index] = values
    else:
      on_batch(values, index, _host(batch.y)[: batch.real])
  return out


def scores(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  *,
  score: str = "loss",
  batch_size: int = 512,
  seed: int = 0,
  mesh: Mesh | None = None,
  workers: int = 0,
  on_batch: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
) -> np.ndarray | None:
  """Every sample's trust score (`sap_jax.trusted.SCORES`, lower = more trusted) over a
  source: the loss (`losses`), or a curvature score, each batch with the probes of its
  index (``fold_in(PRNGKey(seed), i)``) as `sap_jax.trusted.trust_scores` draws them on
  arrays ("curvature_published" in batches of ``min(batch_size, 128)``, "curvature" of
  ``min(batch_size, 256)``; `sap_jax.trusted.curvature_layout` on a mesh), so both give
  the same scores on any mesh. ``on_batch``: as `losses`.
  """
  from sap_jax.sample_scores import SCORES, curvature_layout, curvature_of_batch, layout_batch

  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  if score == "loss":
    return losses(
      apply_fn,
      variables,
      source,
      batch_size=batch_size,
      mesh=mesh,
      workers=workers,
      on_batch=on_batch,
    )
  n = source_length(source, "source")
  k = num_outputs(apply_fn, variables, source, "source")
  variables, mesh = _placed(variables, mesh)
  fn = hashable(apply_fn)
  cap = min(batch_size, 128 if score == "curvature_published" else 256)
  blocks = shd.num_shards(mesh)
  stream, size, rows = curvature_layout(n, cap, blocks)
  key = jax.random.PRNGKey(seed)
  out = None if on_batch is not None else np.empty(n, np.float32)
  batches = feed(source, size, mesh=mesh, indices=stream, num_classes=k, workers=workers)
  for t, batch in enumerate(batches):
    keys, reals, real = layout_batch(key, t, blocks, rows, n)
    values = curvature_of_batch(score, fn, variables, batch.x, batch.y, keys, reals, 1e-3, 10)
    values = _host(values)[:real]
    index = _host(batch.index)[:real]
    if on_batch is None:
      out[index] = values
    else:
      on_batch(values, index, _host(batch.y)[:real])
  return out


def trusted_indices(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  n: int,
  *,
  score: str = "loss",
  class_balanced: bool = False,
  batch_size: int = 512,
  seed: int = 0,
  mesh: Mesh | None = None,
  workers: int = 0,
) -> np.ndarray:
  """The trusted set of a source by a streaming top-k over its scores (`scores`): what
  `sap_jax.trusted.trusted_set` gives on the arrays (the ``n`` lowest, per class with
  ``class_balanced``; "curvature_published": the ``n // K + 1`` lowest of each of the K
  classes), holding O(n · classes) scores instead of N.

  Raises:
    ValueError: ``n`` outside ``[1, N]`` or an unknown score, before any read.
  """
  from sap_jax.sample_scores import SCORES

  total = source_length(source, "source")
  if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= total:
    raise ValueError(
      f"Cannot select n={n!r} trusted samples from {total}: choose an integer 1 ≤ n ≤ "
      f"{total} (e.g. --n-trusted {min(1000, total)})."
    )
  if score not in SCORES:
    raise ValueError(f"Unknown score {score!r}; choose one of {SCORES}.")
  top = LowestK(int(n) + 1)
  scores(
    apply_fn,
    variables,
    source,
    score=score,
    batch_size=batch_size,
    seed=seed,
    mesh=mesh,
    workers=workers,
    on_batch=top.update,
  )
  if score == "curvature_published":
    return top.select_per_class(int(n) // top.num_classes() + 1)
  return top.select(int(n), class_balanced=class_balanced)


def lowest_loss(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  n: int,
  *,
  class_balanced: bool = False,
  batch_size: int = 512,
  mesh: Mesh | None = None,
  workers: int = 0,
) -> np.ndarray:
  """The ``n`` samples of lowest loss (the paper's trusted set), by a streaming top-k:
  `trusted_indices` with ``score="loss"``."""
  return trusted_indices(
    apply_fn,
    variables,
    source,
    n,
    class_balanced=class_balanced,
    batch_size=batch_size,
    mesh=mesh,
    workers=workers,
  )


def stats_batches(
  source: Any,
  indices: Any,
  batch_size: int,
  *,
  mesh: Mesh | None = None,
  workers: int = 0,
):
  """The samples ``indices`` of ``source``, in that order, as `sap_jax.activation_stats`
  batches: host arrays of the real samples on one device (the last batch short: the
  statistics pad and mask it themselves), `sap_jax.sharding.LocalBatch`es over a mesh
  of several (each shard's first global position and its count of real samples)."""
  mesh = checked_mesh(mesh)
  for batch in feed(
    source, batch_size, mesh=mesh, indices=indices, labelled=False, workers=workers
  ):
    yield stats_batch(batch, mesh)


@functools.partial(jax.jit, static_argnums=0)
def _scores_step(apply_fn, stacked, x, y, mask):
  """Correct counts and loss sums on one batch of every variable set stacked on the
  leading axis of ``stacked``: one plain forward per set in a loop (`jax.lax.map`; a
  forward vmapped over parameter sets turns convolutions into grouped ones, measured 5×
  slower on CPU: see `sap_jax.sweep.score_alphas`), one compilation whatever the count."""

  def one(variables):
    logits = check_logits_output(apply_fn(variables, x))
    correct = jnp.sum((jnp.argmax(logits, axis=-1) == y) & mask)
    return correct, jnp.sum(jnp.where(mask, cross_entropy(logits, y), 0.0))

  return jax.lax.map(one, stacked)


def stack_variables(candidates: Sequence[Variables], mesh: Mesh) -> Variables:
  """The variable sets of one model stacked on a new leading axis, replicated on ``mesh``."""
  stacked = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *candidates)
  return shd.replicate(stacked, mesh)


def _score_pass(fn, candidates, source, batch_size, mesh, k, workers, what):
  """(correct counts, loss sums) of each candidate on one pass over ``source``."""
  count = len(jax.tree_util.tree_leaves(candidates)[0])
  correct = np.zeros(count, np.int64)
  loss = np.zeros(count, np.float64)
  for batch in feed(source, batch_size, mesh=mesh, num_classes=k, workers=workers, what=what):
    c, s = jax.device_get(_scores_step(fn, candidates, batch.x, batch.y, batch.mask))
    correct += np.asarray(c, np.int64)
    loss += np.asarray(s, np.float64)
  return correct, loss


def evaluate(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  *,
  batch_size: int = 1024,
  mesh: Mesh | None = None,
  workers: int = 0,
) -> dict[str, float]:
  """Accuracy and mean cross-entropy on a labelled source: sums over one pass."""
  return evaluate_many(
    apply_fn, [variables], source, batch_size=batch_size, mesh=mesh, workers=workers
  )[0]


def evaluate_many(
  apply_fn: ApplyFn,
  candidates: Sequence[Variables],
  source: Any,
  *,
  batch_size: int = 1024,
  mesh: Mesh | None = None,
  workers: int = 0,
  what: str = "source",
) -> list[dict[str, float]]:
  """`evaluate` of several variable sets of one model in one pass over ``source``."""
  n = source_length(source, what)
  k = num_outputs(apply_fn, candidates[0], source, what)
  mesh = checked_mesh(mesh)
  placed = stack_variables(candidates, mesh)
  correct, loss = _score_pass(
    hashable(apply_fn), placed, source, batch_size, mesh, k, workers, what
  )
  return [{"accuracy": int(c) / n, "loss": float(s) / n} for c, s in zip(correct, loss)]


@functools.partial(jax.jit, static_argnums=0)
def _predict_step(apply_fn, variables, x):
  return check_logits_output(apply_fn(variables, x))


def predict_logits(
  apply_fn: ApplyFn,
  variables: Variables,
  source: Any,
  *,
  batch_size: int = 1024,
  mesh: Mesh | None = None,
  workers: int = 0,
) -> np.ndarray:
  """Logits of every sample of ``source`` (labels not read), ``(N, K)`` in source order."""
  n = source_length(source, "source")
  k = num_outputs(apply_fn, variables, source, "source")
  variables, mesh = _placed(variables, mesh)
  fn = hashable(apply_fn)
  out = np.empty((n, k), np.float32)
  for batch in feed(source, batch_size, mesh=mesh, labelled=False, workers=workers):
    out[_host(batch.index)[: batch.real]] = _host(_predict_step(fn, variables, batch.x))[
      : batch.real
    ]
  return out


def score_alphas(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Any,
  alphas: Sequence[float],
  splits: Mapping[str, Any],
  *,
  batch_size: int = 512,
  mesh: Mesh | None = None,
  workers: int = 0,
  alpha_chunk: int | None = None,
):
  """Accuracy of the unchanged model and at every α on every named source split, each
  split read once for the whole grid (`sap_jax.sweep.SplitScores` per name).

  The corrected variables of every α come from `sap_jax.apply_alpha` (the very models
  the sweep returns) and are held together on the devices: ``len(alphas) + 1`` copies of
  the parameters. ``alpha_chunk`` bounds that to ``alpha_chunk + 1`` copies, at
  ``⌈len(alphas) / alpha_chunk⌉`` passes over each split.
  """
  from sap_jax.decomposition import apply_alpha
  from sap_jax.sweep import SplitScores

  alphas = np.asarray(alphas, np.float64).reshape(-1)
  chunk = len(alphas) if alpha_chunk is None else int(alpha_chunk)
  if chunk < 1:
    raise ValueError(f"alpha_chunk must be ≥ 1 or None, got {alpha_chunk}.")
  mesh = checked_mesh(mesh)
  fn = hashable(apply_fn)
  sizes = {name: source_length(src, f"split {name!r}") for name, src in splits.items()}
  k = {
    name: num_outputs(apply_fn, variables, src, f"split {name!r}") for name, src in splits.items()
  }
  base = shd.replicate(variables, mesh)
  correct = {name: [] for name in splits}
  for lo in range(0, len(alphas), chunk):
    candidates = [apply_alpha(base, decomposition, a) for a in alphas[lo : lo + chunk]]
    if lo == 0:
      candidates = [base, *candidates]
    placed = stack_variables(candidates, mesh)
    for name, src in splits.items():
      c, _ = _score_pass(fn, placed, src, batch_size, mesh, k[name], workers, f"split {name!r}")
      correct[name].extend(c.tolist())
  return {
    name: SplitScores(
      np.asarray(correct[name][1:], np.float64) / sizes[name], correct[name][0] / sizes[name]
    )
    for name in splits
  }


__all__ = [
  "Batch",
  "evaluate",
  "evaluate_many",
  "losses",
  "lowest_loss",
  "predict_logits",
  "score_alphas",
  "stats_batches",
]
