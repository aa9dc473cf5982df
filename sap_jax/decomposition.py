"""Decompose once, apply α many times: the two phases of a correction.

SAP's expensive part does not depend on α: one eigendecomposition of every layer's
input statistics (and Vᵀ K, the kernel in that basis), or for a wide layer where the
cost model says it is cheaper, C̃ and a filtered kernel after which each α costs one
Cholesky factorisation (`sap_jax.solve`). `decompose` does it once and returns a
`Decomposition`; `apply_alpha` then turns it into corrected variables for any α — a
scalar for every layer, or one per layer — at the cost of one (d × d)·(d × O) product
(or one Cholesky and two triangular solves) per layer:

    decomposition = sap_jax.decompose(variables, stats)
    corrected = sap_jax.apply_alpha(variables, decomposition, 3e4)

This module owns the `Decomposition`, the choice of method per layer (`layer_methods`),
the decomposition's compiled programs (`JITTED`) and K̂ = P(α)·K (`corrected_kernels`);
the host threads that run layers at once are `sap_jax.host_threads`, the α sweep built on
the two phases is `sap_jax.sweep`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from sap_jax import projection as proj
from sap_jax import solve as slv
from sap_jax.host_threads import default_workers, run_dearest_first, threads_share_context
from sap_jax.kernels import check_kernel, flat_kernel, kernels_of, unflat_kernel, with_kernels
from sap_jax.layer_keys import check_same_model, per_layer_alpha
from sap_jax.spread_eigh import spread_eigh
from sap_jax.stats import LayerStats, Layout
from sap_jax.stats.qr import LayerFactor
from sap_jax.types import Path, Variables


@struct.dataclass
class Decomposition:
  """The α-independent part of a correction of one model.

  Each layer is decomposed by one of two methods (``methods``): "eigh" (a `Basis` in
  ``bases`` and Vᵀ K in ``rotated``; P(α) = V diag(λ) Vᵀ) or "solve" (`SolveData` in
  ``solves``: C̃ and the filtered kernel; P(α)·K by one Cholesky per α, see
  `sap_jax.solve`). A layer is in exactly one of ``bases`` and ``solves``.

  Attributes:
    bases: path → `Basis` (normalised spectrum σ̃ and eigenvectors V) of each eigh layer.
    kernels: path → the layer's kernel in the variables it was made from.
    rotated: path → Vᵀ K, (G, k, O/G), of each eigh layer.
    layouts: ``((path, Layout), …)`` in layer order (static).
    solves: path → `sap_jax.solve.SolveData` of each solve layer.
    samples: path → ``[rows counted, Σ‖r‖² = tr C]`` of each layer's statistics: a
      fingerprint of the samples they were taken on, up to order (`sap_jax.trusted_influence`
      checks its samples against it). Empty for a decomposition built by hand.
  """

  bases: dict[Path, proj.Basis]
  kernels: dict[Path, jax.Array]
  rotated: dict[Path, jax.Array]
  layouts: tuple[tuple[Path, Layout], ...] = struct.field(pytree_node=False)
  solves: dict[Path, slv.SolveData] = struct.field(default_factory=dict)
  samples: dict[Path, jax.Array] = struct.field(default_factory=dict)

  @property
  def methods(self) -> dict[Path, str]:
    """path → "eigh" or "solve", in layer order."""
    return {p: slv.SOLVE if p in self.solves else slv.EIGH for p, _ in self.layouts}

  @property
  def paths(self) -> tuple[Path, ...]:
    """The corrected layers, in layer order."""
    return tuple(p for p, _ in self.layouts)

  @property
  def spectra(self) -> dict[Path, jax.Array]:
    """path → normalised spectrum σ̃ (…, k) of every eigh layer (solve layers have none)."""
    return {p: b.spectrum for p, b in self.bases.items()}


@jax.jit
def _sample_totals(stats: dict[Path, Any]) -> dict[Path, jax.Array]:
  """path → ``[rows counted, tr C]`` (a factor F: ‖F‖², = tr FᵀF), in the statistics' dtype."""
  out = {}
  for path, s in stats.items():
    if isinstance(s, LayerFactor):
      total = jnp.sum(jnp.square(s.factor))
    else:
      total = jnp.einsum("...ii->", s.gram)
    out[path] = jnp.stack([jnp.asarray(s.count, total.dtype).sum(), total])
  return out


_eigh_jit = jax.jit(proj.eigh_basis)
_eigh_consume_jit = jax.jit(proj.eigh_basis, donate_argnums=0)
_svd_jit = jax.jit(proj.svd_basis)


@functools.partial(jax.jit, static_argnames=("layout",))
def _prepare_jit(gram, kernel, *, layout):
  d, g = layout.dim, layout.groups
  return slv.prepare(gram.reshape(g, d, d), flat_kernel(kernel, layout))


@functools.partial(jax.jit, static_argnames=("layouts",))
def _rotate_jit(kernels, layer_bases, *, layouts):
  return proj.rotated_kernels(kernels, layer_bases, dict(layouts))


def corrected_kernels(decomposition: Decomposition, alpha: Any) -> dict[Path, jax.Array]:
  """path → K̂ = P(α)·K of every decomposed layer, by its method (pure, traceable).

  Args:
    decomposition: from `decompose`.
    alpha: scalar α or dict path → α, in any float dtype; jit, grad and vmap over α
      work, and so does grad with respect to the decomposition's arrays (C̃ of a
      solve layer, σ̃ and V of an eigh layer).
  """
  layouts = dict(decomposition.layouts)
  alpha = per_layer_alpha(alpha, layouts)
  eigh_layouts = {p: layouts[p] for p in decomposition.bases}
  out = proj.projected_kernels(
    decomposition.kernels, decomposition.bases, eigh_layouts, alpha, decomposition.rotated
  )
  for path, data in decomposition.solves.items():
    layout, kernel = layouts[path], decomposition.kernels[path]
    a = proj.alpha_for(alpha, path)
    out[path] = unflat_kernel(slv.project(data, a).astype(kernel.dtype), layout)
  return {p: out[p] for p in layouts}


@jax.jit
def _project_jit(decomposition, alpha):
  """One compiled program for all layers' K̂ (eager dispatch would compile every
  distinct op shape separately)."""
  return corrected_kernels(decomposition, alpha)


JITTED = {
  "sweep.eigh": _eigh_jit,
  "sweep.eigh_consume": _eigh_consume_jit,
  "sweep.svd": _svd_jit,
  "sweep.solve_prepare": _prepare_jit,
  "sweep.rotate": _rotate_jit,
  "sweep.project": _project_jit,
}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def layer_methods(
  stats: Mapping[Path, LayerStats | LayerFactor],
  *,
  method: str = slv.AUTO,
  n_alphas: int = 1,
) -> dict[Path, str]:
  """The method `decompose` uses for each layer ("eigh" or "solve"), from shapes alone.

  ``method="auto"`` (default) asks `sap_jax.solve.choose_method` per layer: eigh below
  `sap_jax.solve.AUTO_MIN_WIDTH` inputs, else the cheaper path by a cost model in
  K = ``n_alphas``, d and the kernel's output width; "eigh" or "solve" applies to every
  layer.
  A `LayerFactor` (TSQR statistics) always takes the eigh-like path: the thin SVD of
  its factor.
  """
  slv.check_method(method)
  if n_alphas < 1:
    raise ValueError(f"n_alphas must be ≥ 1 (how many α will be applied), got {n_alphas}.")
  out = {}
  for path, s in stats.items():
    layout = s.layout
    if isinstance(s, LayerFactor) or method == slv.EIGH:
      out[path] = slv.EIGH
    elif method == slv.SOLVE:
      out[path] = slv.SOLVE
    else:
      width = math.prod(layout.kernel_shape[layout.num_in_axes :]) // layout.groups
      out[path] = slv.choose_method(layout.dim, width, n_alphas, layout.groups)
  return out


PARALLEL_ABOVE = 1e10
"""Below this total cost (`_layer_cost` units, GEMM-flop equivalents; 1e10 is about 0.15 s
of LAPACK on one core of the project's CPU, 6.9e10 a second) `decompose` runs its layers
one after another: threads would cost more than they save (small models, e.g. the
digits CNN at 1.5e9, whose first call in a new process is mostly fixed costs that
threads only contend for). Applies to the default ``workers`` only; an explicit value
is obeyed."""


def _layer_cost(s: LayerStats | LayerFactor, method: str) -> float:
  """A layer's decomposition cost in GEMM-flop equivalents (for the largest-first order)."""
  layout = s.layout
  d, g = layout.dim, layout.groups
  if isinstance(s, LayerFactor):
    return 4.0 * g * s.factor.shape[-2] * d * d
  return g * d**3 * (slv.CHOLESKY_CUBIC if method == slv.SOLVE else slv.EIGH_CUBIC)


def _is_traced(tree: Any) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def check_decompose_args(variables, stats, method, n_alphas, workers):
  """`decompose`'s input checks (all before any work): ``(methods, kernels, workers)``."""
  methods = layer_methods(stats, method=method, n_alphas=n_alphas)
  if workers is None:
    workers = default_workers()
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise ValueError(
      f"workers must be an int ≥ 1 (layers decomposed at once), got {workers!r}; "
      "omit it for default_workers()."
    )
  kernels = kernels_of(variables, list(stats))
  for path, s in stats.items():
    if methods[path] == slv.SOLVE and not isinstance(s, LayerFactor):
      check_kernel(kernels[path], s.layout)
  return methods, kernels, workers


def decompose(
  variables: Variables,
  stats: Mapping[Path, LayerStats | LayerFactor],
  *,
  consume: bool = False,
  method: str = slv.AUTO,
  n_alphas: int = 1,
  bases: Mapping[Path, proj.Basis] | None = None,
  workers: int | None = None,
  mesh: tuple[Mesh, str] | None = None,
) -> Decomposition:
  """Decomposes every layer's statistics once (the α-independent part of a correction).

  Per layer (see `layer_methods`): "eigh", one eigendecomposition and the kernel in
  its basis (Vᵀ K); or "solve", C̃ = C / tr C and the filtered kernel, after which each
  α costs one Cholesky factorisation (`sap_jax.solve`). TSQR statistics
  (`sap_jax.stats.qr.activation_factors`) are decomposed by the thin SVD of their
  factor. Each layer is its own compiled program (one workspace per running layer; a
  single program for all layers would hold every layer's scaled copy: ResNet18
  +173 MB), and ``workers`` layers run at once, one per host thread, dearest first.
  The result does not depend on ``workers``: every layer runs the same program on the
  same inputs (bit for bit, tested). Each compiled program is module-level, so a later
  call on a model of the same shapes compiles nothing.

  Args:
    variables: the model variables (not modified) whose kernels will be corrected.
    stats: per-layer statistics (`activation_stats`, optionally `select_layers`-filtered,
      or `activation_factors`).
    consume: donate the Gram matrices and drop them from ``stats`` (a dict the caller
      owns and no longer needs) as they are decomposed: the eigenvectors reuse their
      memory.
    method: "auto" (default: eigh for every layer narrower than
      `sap_jax.solve.AUTO_MIN_WIDTH`, the cost model's choice for ``n_alphas`` α values
      above), "eigh" (every layer; what rounds, influence and the spectra of every
      layer need), or "solve".
    n_alphas: how many α values will be applied (1 for one correction, a sweep's grid
      size for a sweep); only "auto" reads it.
    bases: eigenbases already computed for some "eigh" layers (path → `Basis`, e.g.
      `sap_jax.spread_eigh.spread_eigh` over a mesh), used instead of a new eigh.
    workers: how many layers to decompose at once (host threads); default
      `default_workers` (the CPU cores not kept busy by other work, at most 4; 1 on an
      accelerator; 1 when the layers' total cost is below `PARALLEL_ABOVE`). 1 runs
      them one after another in layer order. Under an outer `jax.jit` (traced statistics),
      or inside a thread-local JAX context (`threads_share_context` is False), they run
      one after another in the calling thread whatever ``workers`` says.
    mesh: ``(mesh, axis)`` when the statistics were combined over a mesh (replicated
      Gram matrices): every "eigh" layer not in ``bases`` is then decomposed on one
      device of the axis and its basis shared (`sap_jax.spread_eigh.spread_eigh`); a
      "solve" layer is prepared where its Gram matrix is.

  Returns:
    A `Decomposition`, computed (not pending) when this returns.
  """
  default = workers is None
  methods, kernels, workers = check_decompose_args(variables, stats, method, n_alphas, workers)
  if mesh is not None:
    given = dict(bases or {})
    spread = {
      p: s.gram
      for p, s in stats.items()
      if methods[p] == slv.EIGH and p not in given and not isinstance(s, LayerFactor)
    }
    bases = {**given, **spread_eigh(spread, *mesh)}
  layouts = tuple((p, s.layout) for p, s in stats.items())
  samples = _sample_totals(dict(stats))  # before any Gram matrix is consumed
  if workers > 1 and (_is_traced((stats, kernels)) or not threads_share_context()):
    workers = 1  # traced into the caller's program, or a thread-local context: no threads
  layer_bases: dict[Path, proj.Basis] = {}
  solves: dict[Path, slv.SolveData] = {}
  tasks: list[tuple[float, Callable[[], Any]]] = []
  targets: list[tuple[dict, Path]] = []  # where each task's result goes
  for path, layout in layouts:
    s = stats.pop(path) if consume else stats[path]
    if isinstance(s, LayerFactor):
      task, target = (_layer_cost(s, slv.EIGH), functools.partial(_svd_jit, s.factor)), layer_bases
    elif bases is not None and path in bases and methods[path] != slv.SOLVE:
      layer_bases[path] = bases[path]
      continue
    elif methods[path] == slv.SOLVE:
      fn = functools.partial(_prepare_jit, s.gram, kernels[path], layout=layout)
      task, target = (_layer_cost(s, slv.SOLVE), fn), solves
    else:
      eigh = _eigh_consume_jit if consume else _eigh_jit
      task, target = (_layer_cost(s, slv.EIGH), functools.partial(eigh, s.gram)), layer_bases
    tasks.append(task)
    targets.append((target, path))
    del s
  if default and sum(cost for cost, _ in tasks) < PARALLEL_ABOVE:
    workers = 1  # a small model: threads would cost more than they save
  for (target, path), result in zip(targets, run_dearest_first(tasks, workers)):
    target[path] = result
  del tasks
  layer_bases = {p: layer_bases[p] for p, _ in layouts if p in layer_bases}  # layer order
  solves = {p: solves[p] for p, _ in layouts if p in solves}
  eigh_layouts = tuple((p, lay) for p, lay in layouts if p in layer_bases)
  rotated = _rotate_jit(kernels, layer_bases, layouts=eigh_layouts)
  return jax.block_until_ready(
    Decomposition(layer_bases, kernels, rotated, layouts, solves, samples)
  )


def apply_alpha(variables: Variables, decomposition: Decomposition, alpha: Any) -> Variables:
  """The corrected variables at ``alpha``: every decomposed layer's kernel K → P(α)·K.

  Args:
    variables: the variables the decomposition was made from (not modified); every
      leaf but the corrected kernels is shared with the result.
    decomposition: from `decompose`.
    alpha: α > 0, a scalar for every layer or a dict layer → α, keyed by path tuples
      or by the "/"-joined names ``result.layers`` prints; a key that names no layer is
      refused. Traceable: jit, grad and vmap over α work.

  Returns:
    New variables. The sweep, `run_sap` and `correct` all go through this one compiled
    program, so the model a sweep scored is the model they return.
  """
  alpha = per_layer_alpha(alpha, decomposition.paths)
  check_same_model(variables, decomposition.kernels)
  if not isinstance(alpha, jax.core.Tracer):
    proj.check_alpha(alpha)

  def f32(a):  # a host value stays on the host: eager jnp would compile a program
    return jnp.asarray(a, jnp.float32) if isinstance(a, jax.Array) else np.asarray(a, np.float32)

  if isinstance(alpha, Mapping):
    alpha = {p: f32(a) for p, a in alpha.items()}
  else:
    alpha = f32(alpha)
  return with_kernels(variables, _project_jit(decomposition, alpha))
