"""SAP in one call (`correct`) and the choice of α on a validation split (`sweep_alpha`)."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax import projection as proj
from sap_jax import stats as st
from sap_jax.batching import padded_batches
from sap_jax.hashable import hashable

ApplyFn = Callable[[Any, jax.Array], jax.Array]
Path = st.Path

# The paper's grid is 1e3…1e6 (3e4 typical on CIFAR); small models on small data
# prefer 1e2…3e3, so the default grid reaches down to 1e2.
DEFAULT_ALPHAS = (1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)


def select_layers(
    stats: Mapping[Path, st.LayerStats],
    *,
    exclude: Sequence[str] = (),
    layer_range: tuple[int | None, int | None] | None = None,
) -> dict[Path, st.LayerStats]:
  """Restricts statistics (and so the correction) to some layers.

  Args:
    stats: output of `activation_stats`, ordered by first call.
    exclude: glob patterns matched against "/"-joined layer paths, e.g.
      ``("head",)`` to leave the classifier alone or ``("*Conv_0",)``.
    layer_range: ``(start, stop)`` slice over the layers in call order (negative
      indices count from the end; ``(0, -1)`` skips the last layer).

  Returns:
    The filtered dict, order kept.

  Raises:
    ValueError: a pattern that matches no layer (likely a typo), or nothing left.
  """
  names = {p: "/".join(p) for p in stats}
  for pattern in exclude:
    if not any(fnmatch.fnmatchcase(n, pattern) for n in names.values()):
      raise ValueError(
          f"exclude pattern {pattern!r} matches no layer; the layers are "
          f"{list(names.values())}."
      )
  paths = list(stats)
  if layer_range is not None:
    paths = paths[slice(*layer_range)]
  kept = {
      p: stats[p]
      for p in paths
      if not any(fnmatch.fnmatchcase(names[p], pat) for pat in exclude)
  }
  if not kept:
    raise ValueError(
        "No layer left to project after exclude/layer_range; loosen the selection."
    )
  return kept


def _check_inputs(x: Any, what: str) -> None:
  if x is None or len(x) == 0:
    raise ValueError(f"{what} is empty: SAP needs at least one input sample.")
  if not np.all(np.isfinite(np.asarray(x, np.float32))):
    raise ValueError(f"{what} contains NaN or Inf; clean the inputs first.")


def correct(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    x_trusted: Any,
    alpha: Any,
    *,
    batch_size: int = 128,
    exclude: Sequence[str] = (),
    layer_range: tuple[int | None, int | None] | None = None,
    rounds: int = 1,
    rows_per_batch: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
  """Corrects a model with SAP: statistics on the trusted inputs → projections → params.

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: model variables (not modified).
    x_trusted: the trusted inputs (N_trust, …).
    alpha: scaling coefficient α > 0 (scalar or dict path → scalar).
    batch_size: trusted samples per forward pass while collecting statistics.
    exclude: glob patterns of layer paths to leave unchanged (see `select_layers`).
    layer_range: slice of layers (call order) to project.
    rounds: repeat the correction this many times on the corrected model, α × 10
      each round (as the published code allows). 1 is the paper's method.
    rows_per_batch: optional row budget per layer and batch (default: all rows).
    seed: seed of the row subsampling.

  Returns:
    Corrected variables.
  """
  _check_inputs(x_trusted, "x_trusted")
  proj.check_alpha(alpha)
  if rounds < 1:
    raise ValueError(f"rounds must be ≥ 1, got {rounds}.")
  current = dict(variables)
  for r in range(rounds):
    stats = st.activation_stats(
        apply_fn,
        current,
        st.batched(np.asarray(x_trusted), batch_size),
        rows_per_batch=rows_per_batch,
        seed=seed + r,
    )
    stats = select_layers(stats, exclude=exclude, layer_range=layer_range)
    scale = 10.0**r
    alpha_r = (
        {p: a * scale for p, a in alpha.items()} if isinstance(alpha, Mapping) else alpha * scale
    )
    layouts = tuple((p, s.layout) for p, s in stats.items())
    layer_bases = _bases(stats, consume=True)  # frees each Gram matrix once decomposed
    del stats
    kernels = _project_jit(proj.kernels_of(current, layer_bases), layer_bases, alpha_r, layouts=layouts)
    current = proj.with_kernels(current, kernels)
  return current


@functools.partial(jax.jit, static_argnames=("layouts",))
def _project_jit(kernels, layer_bases, alpha, *, layouts, rotated=None):
  """One compiled program for all layers' K̂ = V (λ ⊙ Vᵀ K) (eager dispatch would
  compile every distinct op shape separately); ``layouts`` is a tuple of
  (path, Layout) pairs (hashable)."""
  return proj.projected_kernels(kernels, layer_bases, dict(layouts), alpha, rotated)


@functools.partial(jax.jit, static_argnames=("apply_fn",))
def _count_jit(v, x, y, real, *, apply_fn):
  """Correct predictions among the first ``real`` samples of a padded batch."""
  hit = (jnp.argmax(apply_fn(v, x), axis=-1) == y) & (jnp.arange(len(y)) < real)
  return jnp.sum(hit)


@functools.partial(jax.jit, static_argnames=("layouts",))
def _rotate_jit(kernels, layer_bases, *, layouts):
  return proj.rotated_kernels({"params": _nest(kernels)}, layer_bases, dict(layouts))


def _nest(kernels):
  """{path: kernel} → the nested params dict `rotated_kernels` reads."""
  out: dict = {}
  for path, k in kernels.items():
    node = out
    for name in path:
      node = node.setdefault(name, {})
    node["kernel"] = k
  return out


_eigh_jit = jax.jit(proj.eigh_basis)
_eigh_consume_jit = jax.jit(proj.eigh_basis, donate_argnums=0)


def _bases(stats: Mapping[Path, st.LayerStats], *, consume: bool = False) -> dict[Path, proj.Basis]:
  """All layers' eigendecompositions (what `proj.bases` computes), computed before
  returning, one layer at a time.

  Layer by layer, only one layer's eigh workspace is alive at a time (one program
  for all layers holds every layer's scaled copy: ResNet18 +173 MB). With
  ``consume`` the Gram matrices are donated and dropped from ``stats`` (a dict the
  caller owns) as they are decomposed: the eigenvectors reuse their memory.
  """
  out = {}
  for path in list(stats):
    if consume:
      gram = stats.pop(path).gram
      out[path] = _eigh_consume_jit(gram)
      del gram
    else:
      out[path] = _eigh_jit(stats[path].gram)
  return jax.block_until_ready(out)


class SweepResult(NamedTuple):
  """Validation accuracy of the original model and of the model corrected with each α.

  Attributes:
    alphas: float64[K] the α values tried, in the given order.
    accuracies: float64[K] validation accuracy for each α.
    baseline_accuracy: validation accuracy of the unchanged model.
    best_alpha: the chosen α, or None when no α beats the unchanged model
      (keeping the original model wins ties).
    best_accuracy: validation accuracy of the choice.
  """

  alphas: np.ndarray
  accuracies: np.ndarray
  baseline_accuracy: float
  best_alpha: float | None
  best_accuracy: float


def sweep_alpha(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    stats: Mapping[Path, st.LayerStats],
    alphas: Sequence[float],
    x_val: Any,
    y_val: Any,
    *,
    batch_size: int = 512,
    alpha_chunk: int | None = None,
) -> SweepResult:
  """Scores every α on a validation split with one eigendecomposition per layer.

  The bases (and Vᵀ K) are computed once; each α then costs one cheap kernel
  update K̂ = V (λ(α) ⊙ Vᵀ K) and one plain evaluation of the validation split:
  K projected evaluations, not K corrections.

  Args:
    apply_fn: eval-mode forward.
    variables: the original variables.
    stats: statistics of the trusted set (optionally `select_layers`-filtered).
    alphas: the grid of α > 0 (e.g. `DEFAULT_ALPHAS`).
    x_val: validation inputs; in the honest protocol the *noisy* validation split.
    y_val: validation labels (noisy, or clean for the oracle protocol).
    batch_size: validation samples per call.
    alpha_chunk: ignored, kept for compatibility: the α are evaluated one at a
      time (one parameter copy in memory).

  Returns:
    A `SweepResult`.
  """
  del alpha_chunk
  return _sweep(apply_fn, variables, stats, alphas, x_val, y_val, batch_size=batch_size)[0]


class _Prepared(NamedTuple):
  """The α-independent part of a correction: bases, kernels and Vᵀ K per layer."""

  kernels: dict[Path, jax.Array]
  bases: dict[Path, proj.Basis]
  rotated: dict[Path, jax.Array]
  layouts: tuple[tuple[Path, st.Layout], ...]


def _prepare(variables: Mapping[str, Any], stats: Mapping[Path, st.LayerStats]) -> _Prepared:
  layouts = tuple((p, s.layout) for p, s in stats.items())
  layer_bases = _bases(stats)
  kernels = proj.kernels_of(variables, layer_bases)
  # Vᵀ K once; each α then costs one (d × d)·(d × O) product per layer.
  rotated = _rotate_jit(kernels, layer_bases, layouts=layouts)
  return _Prepared(kernels, layer_bases, rotated, layouts)


def _with_alpha(variables: Mapping[str, Any], prepared: _Prepared, alpha: float) -> dict[str, Any]:
  """``variables`` with every prepared layer's kernel projected at ``alpha``: the
  same compiled program (so the same numbers) for the sweep and the final model."""
  new = _project_jit(
      prepared.kernels, prepared.bases, jnp.float32(alpha), layouts=prepared.layouts,
      rotated=prepared.rotated,
  )
  return proj.with_kernels(variables, new)


def _sweep(
    apply_fn: ApplyFn,
    variables: Mapping[str, Any],
    stats: Mapping[Path, st.LayerStats],
    alphas: Sequence[float],
    x_val: Any,
    y_val: Any,
    *,
    batch_size: int = 512,
) -> tuple[SweepResult, _Prepared]:
  """`sweep_alpha`, also returning the prepared bases (for `_with_alpha`)."""
  alphas_np = np.asarray(alphas, np.float64).reshape(-1)
  if alphas_np.size == 0:
    raise ValueError("alphas is empty; give at least one α (e.g. DEFAULT_ALPHAS).")
  proj.check_alpha(jnp.asarray(alphas_np))
  _check_inputs(x_val, "x_val")
  if len(x_val) != len(y_val):
    raise ValueError(f"x_val has {len(x_val)} samples but y_val has {len(y_val)}.")
  x_val, y_val = np.asarray(x_val), np.asarray(y_val, np.int32)
  prepared = _prepare(variables, stats)
  fn = hashable(apply_fn)
  batches = list(padded_batches(x_val, y_val, batch_size=batch_size))
  n = len(x_val)

  def accuracy(v) -> float:
    return sum(int(_count_jit(v, xb, yb, real, apply_fn=fn)) for (xb, yb), real in batches) / n

  baseline = accuracy(variables)
  # One α at a time through the plain compiled forward: a forward vmapped over K
  # parameter sets turns every conv into a batched-kernel (grouped) conv, measured
  # 5× slower than K plain forwards on CPU (ResNet18), and holds K copies.
  accuracies = np.asarray([accuracy(_with_alpha(variables, prepared, a)) for a in alphas_np])
  best = int(np.argmax(accuracies))
  if accuracies[best] > baseline:
    best_alpha, best_acc = float(alphas_np[best]), float(accuracies[best])
  else:
    best_alpha, best_acc = None, float(baseline)
  return SweepResult(alphas_np, accuracies, float(baseline), best_alpha, best_acc), prepared
