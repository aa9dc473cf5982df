"""Decompose once, apply α many times: the two phases of a correction, and the α sweep.

SAP's expensive part does not depend on α: one eigendecomposition of every layer's
input statistics (and Vᵀ K, the kernel in that basis), or for a wide layer where the
cost model says it is cheaper, C̃ and a filtered kernel after which each α costs one
Cholesky factorisation (`sap_jax.solve`). `decompose` does it once and returns a
`Decomposition`; `apply_alpha` then turns it into corrected variables for any α — a
scalar for every layer, or one per layer — at the cost of one (d × d)·(d × O) product
(or one Cholesky and two triangular solves) per layer:

    decomposition = sap_jax.decompose(variables, stats)
    corrected = sap_jax.apply_alpha(variables, decomposition, 3e4)

`sweep_alpha` is built on the two: it scores the unchanged model and every α of a grid
on any number of named splits in one pass (one projection per α, every split
evaluated on it), and chooses α on the split given as ``(x_val, y_val)`` — in the
honest protocol the *noisy* validation split. Clean validation labels or the test set,
where the caller has them, are scored by the same pass under their own names and never
influence the choice.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh

from sap_jax import projection as proj
from sap_jax import solve as slv
from sap_jax.arg_checks import check_alpha_grid, check_count, check_eval_splits
from sap_jax.data.feeder import labels_on_host
from sap_jax.data.sources import is_source, no_separate_labels
from sap_jax.evaluation import check_finite_inputs, evaluate_checked
from sap_jax.forward_checks import output_width
from sap_jax.input_checks import check_labels
from sap_jax.kernels import check_kernel, flat_kernel, kernels_of, unflat_kernel, with_kernels
from sap_jax.layer_keys import check_same_model, per_layer_alpha
from sap_jax.spread_eigh import spread_eigh
from sap_jax.stats import LayerStats, Layout
from sap_jax.stats.qr import LayerFactor
from sap_jax.types import ApplyFn, Path, Variables

# The paper's grid is 1e3…1e6 (3e4 typical on CIFAR); small models on small data
# prefer 1e2…3e3, so the default grid reaches down to 1e2.
DEFAULT_ALPHAS = (1e2, 3e2, 1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6)

CHOICE_SPLIT = "val"
"""The name under which `SweepResult.splits` holds the split that chooses α."""


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


MAX_DEFAULT_WORKERS = 4
"""The cap of `max_workers` (measured only on 2 cores; more concurrent LAPACK calls also
mean more workspaces alive at once)."""

PARALLEL_ABOVE = 1e10
"""Below this total cost (`_layer_cost` units, GEMM-flop equivalents; 1e10 is about 0.15 s
of LAPACK on one core of the project's CPU, 6.9e10 a second) `decompose` runs its layers
one after another: threads would cost more than they save (small models, e.g. the
digits CNN at 1.5e9, whose first call in a new process is mostly fixed costs that
threads only contend for). Applies to the default ``workers`` only; an explicit value
is obeyed."""


def max_workers() -> int:
  """The most layers `decompose` runs at once by default: on the CPU backend the cores
  this process may use (``os.sched_getaffinity``), at most `MAX_DEFAULT_WORKERS`;
  elsewhere 1 (an accelerator runs one program at a time)."""
  if jax.default_backend() != "cpu":
    return 1
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    cores = os.cpu_count() or 1
  return max(1, min(cores, MAX_DEFAULT_WORKERS))


def default_workers() -> int:
  """How many layers `decompose` decomposes at once by default: `max_workers`, less the
  cores other work keeps busy (the 1-minute load average beyond this process's own
  thread, ``int(load − 1)``), at least 1.

  Each layer's eigh (LAPACK syevd) or Cholesky runs on the host thread that dispatched
  it, so layers dispatched from different threads run on different cores; JAX's
  asynchronous dispatch alone, one program holding every layer, or layers placed on
  several host devices all ran one after another (measured). Two d = 2304 eighs on an
  idle 2-core machine: 1.86× faster on two threads; with another process keeping one
  core busy, 1.24× slower; at load 10, no faster (benchmarks/README.md). Hence the
  load term. The result never depends on it (bit for bit).
  """
  cores = max_workers()
  try:
    busy = max(0, int(os.getloadavg()[0] - 1.0))
  except (AttributeError, OSError):  # no load average on this platform
    busy = 0
  return max(1, cores - busy)


def _layer_cost(s: LayerStats | LayerFactor, method: str) -> float:
  """A layer's decomposition cost in GEMM-flop equivalents (for the largest-first order)."""
  layout = s.layout
  d, g = layout.dim, layout.groups
  if isinstance(s, LayerFactor):
    return 4.0 * g * s.factor.shape[-2] * d * d
  return g * d**3 * (slv.CHOLESKY_CUBIC if method == slv.SOLVE else slv.EIGH_CUBIC)


# JAX options a `with` block can set for the calling thread only (a new thread sees the
# global values): work handed to another thread must see the same ones.
_THREAD_LOCAL_OPTIONS = (
  "jax_enable_x64",
  "jax_default_matmul_precision",
  "jax_default_device",
  "jax_numpy_dtype_promotion",
  "jax_numpy_rank_promotion",
  "jax_default_prng_impl",
  "jax_debug_nans",
  "jax_debug_infs",
  "jax_disable_jit",
)


def _jax_context() -> tuple:
  """The calling thread's values of the thread-local JAX options and meshes."""
  values = tuple(repr(getattr(jax.config, name, None)) for name in _THREAD_LOCAL_OPTIONS)
  meshes = tuple(
    repr(getattr(jax.sharding, f)()) if hasattr(jax.sharding, f) else ""
    for f in ("get_abstract_mesh", "get_mesh")
  )
  return values + meshes


def threads_share_context() -> bool:
  """Whether a new host thread would run JAX as the calling thread does: False inside
  a ``with jax.enable_x64(…)``, ``jax.default_device(…)``, ``jax.set_mesh(…)`` (…)
  block, which holds for the calling thread only. `decompose` then runs every layer in
  the calling thread."""
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    return pool.submit(_jax_context).result() == _jax_context()


def _is_traced(tree: Any) -> bool:
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree_util.tree_leaves(tree))


def run_dearest_first(tasks: list[tuple[float, Callable[[], Any]]], workers: int) -> list[Any]:
  """Runs every ``(cost, thunk)``; returns the results in the tasks' order.

  ``workers == 1``: one after another, in order. Otherwise on a pool of host threads,
  dearest first (longest-processing-time-first: the pool's FIFO queue then balances
  the cores), each thread blocking until its layer's result is computed.
  """
  if workers == 1 or len(tasks) <= 1:
    return [thunk() for _, thunk in tasks]
  order = sorted(range(len(tasks)), key=lambda i: -tasks[i][0])
  out: list[Any] = [None] * len(tasks)
  with concurrent.futures.ThreadPoolExecutor(
    max_workers=min(workers, len(tasks)), thread_name_prefix="sap_decompose"
  ) as pool:
    futures = {i: pool.submit(lambda f=tasks[i][1]: jax.block_until_ready(f())) for i in order}
    for i, fut in futures.items():
      out[i] = fut.result()
  return out


def _checked(variables, stats, method, n_alphas, workers):
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
  methods, kernels, workers = _checked(variables, stats, method, n_alphas, workers)
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


def choose_alpha(
  alphas: Sequence[float], accuracies: Sequence[float], baseline: float
) -> tuple[float | None, float]:
  """The sweep's rule: the first α (grid order) of highest accuracy, if it beats the
  unchanged model; else None (keep the model: the unchanged model wins ties).

  Returns:
    ``(alpha or None, its accuracy)``.
  """
  accuracies = np.asarray(accuracies, np.float64)
  best = int(np.argmax(accuracies))
  if accuracies[best] > baseline:
    return float(alphas[best]), float(accuracies[best])
  return None, float(baseline)


class SplitScores(NamedTuple):
  """Accuracy on one labelled split: of the unchanged model and at every α.

  Attributes:
    accuracies: float64[K], in the sweep's α order.
    baseline: accuracy of the unchanged model.
  """

  accuracies: np.ndarray
  baseline: float


class SweepResult(NamedTuple):
  """Accuracy of the original model and of the model corrected with each α.

  Attributes:
    alphas: float64[K] the α values tried, in the given order.
    accuracies: float64[K] accuracy for each α on the split that chooses α.
    baseline_accuracy: accuracy of the unchanged model on that split.
    best_alpha: the chosen α, or None when no α beats the unchanged model
      (keeping the original model wins ties).
    best_accuracy: accuracy of the choice.
    splits: name → `SplitScores` of every scored split, the choosing one under
      ``"val"`` (`CHOICE_SPLIT`).
  """

  alphas: np.ndarray
  accuracies: np.ndarray
  baseline_accuracy: float
  best_alpha: float | None
  best_accuracy: float
  splits: dict[str, SplitScores] = {}

  def best_for(self, name: str) -> tuple[float | None, float]:
    """The α that split ``name`` would choose by the sweep's rule, and its accuracy."""
    s = self._split(name)
    return choose_alpha(self.alphas, s.accuracies, s.baseline)

  def accuracy_at(self, name: str, alpha: float | None) -> float:
    """Accuracy on split ``name`` at ``alpha`` (None: the unchanged model)."""
    s = self._split(name)
    if alpha is None:
      return float(s.baseline)
    hits = np.flatnonzero(self.alphas == float(alpha))
    if hits.size == 0:
      raise KeyError(f"alpha {alpha} was not swept; the grid is {self.alphas.tolist()}.")
    return float(s.accuracies[hits[0]])

  def _split(self, name: str) -> SplitScores:
    if name not in self.splits:
      raise KeyError(f"split {name!r} was not scored; scored splits: {sorted(self.splits)}.")
    return self.splits[name]


def check_split(
  x: Any, y: Any, name: str, apply_fn: ApplyFn | None = None, variables: Variables = None
) -> tuple[np.ndarray, np.ndarray]:
  """A labelled split, refused when empty, non-finite or mismatched: the inputs where the
  feeder reads them (`sap_jax.evaluation.check_finite_inputs`: a global array stays on its
  devices), the labels as a host int32 array (a global one all-gathered); with
  the model (``apply_fn`` and ``variables``), labels outside ``[0, K)`` and a forward
  `sap_jax.input_checks.output_width` refuses are refused too (a shape-only trace)."""
  what = f"split {name!r}"
  x = check_finite_inputs(x, what)
  if y is not None and np.ndim(y) >= 1 and len(x) != len(y):
    raise ValueError(f"{what} has {len(x)} samples but {len(y)} labels.")
  y = check_labels(labels_on_host(y), len(x), None, what)  # what needs no model, before the trace
  if apply_fn is not None:
    y = check_labels(y, len(x), output_width(apply_fn, variables, x), what)
  return x, y


def score_alphas(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  alphas: Sequence[float],
  splits: Mapping[str, tuple[Any, Any]],
  *,
  batch_size: int = 512,
) -> dict[str, SplitScores]:
  """Accuracy of the unchanged model and at every α, on every named split.

  One projection per α (`apply_alpha`), each split evaluated on it with
  `sap_jax.evaluation.evaluate`. One α at a time through the plain compiled forward:
  a forward vmapped over K parameter sets turns every conv into a batched-kernel
  (grouped) conv, measured 5× slower than K plain forwards on CPU (ResNet18), and holds
  K parameter copies.

  Args:
    apply_fn: eval-mode forward.
    variables: the variables the decomposition was made from.
    decomposition: from `decompose`.
    alphas: the α grid.
    splits: name → ``(x, y)``.
    batch_size: samples per evaluation call.

  Returns:
    name → `SplitScores`.
  """
  splits = checked_splits(apply_fn, variables, splits)
  return _score_checked(apply_fn, variables, decomposition, alphas, splits, batch_size)


def checked_splits(
  apply_fn: ApplyFn, variables: Variables, splits: Mapping[str, tuple[Any, Any]]
) -> dict[str, tuple[Any, Any]]:
  """name → ``(x, y)`` after every check, once per split before any work (`check_split`,
  then labels in ``[0, K)`` for the model's K outputs), so the sweep scores every α
  without checking the splits again."""
  out = {}
  for name, (x, y) in splits.items():
    x, y = check_split(x, y, name)  # inputs finite, labels non-negative integers
    y = check_labels(y, len(x), output_width(apply_fn, variables, x), f"split {name!r}")
    out[name] = (x, y)
  return out


def _score_checked(apply_fn, variables, decomposition, alphas, splits, batch_size, progress=None):
  """`score_alphas` on splits from `checked_splits`; ``progress(i, K)`` before each α and
  after the last (i: α values scored so far)."""
  alphas_np = np.asarray(alphas, np.float64).reshape(-1)

  def accuracies(v) -> dict[str, float]:
    return {
      name: evaluate_checked(apply_fn, v, x, y, batch_size=batch_size)["accuracy"]
      for name, (x, y) in splits.items()
    }

  baseline = accuracies(variables)
  per_alpha = []
  for a in alphas_np:
    if progress is not None:
      progress(len(per_alpha), len(alphas_np))
    per_alpha.append(accuracies(apply_alpha(variables, decomposition, a)))
  if progress is not None:
    progress(len(per_alpha), len(alphas_np))
  return {
    name: SplitScores(np.asarray([acc[name] for acc in per_alpha], np.float64), baseline[name])
    for name in splits
  }


def sweep_alpha(
  apply_fn: ApplyFn,
  variables: Variables,
  stats: Mapping[Path, LayerStats] | Decomposition,
  alphas: Sequence[float],
  x_val: Any,
  y_val: Any,
  *,
  batch_size: int = 512,
  eval_splits: Mapping[str, tuple[Any, Any]] | None = None,
  progress: Callable[[int, int], None] | None = None,
  method: str = slv.AUTO,
  workers: int | None = None,
) -> SweepResult:
  """Scores every α with one decomposition per layer and chooses the best.

  Given statistics, the layers are decomposed first (`decompose` with ``workers``),
  then the unchanged model and every α are scored. (Decomposing on a host thread while
  the unchanged model is scored was measured slower on a loaded 2-core machine: the
  evaluation's own threads and the decomposition's compete for the cores.) Given a
  `Decomposition`, nothing is decomposed.

  Args:
    apply_fn: eval-mode forward.
    variables: the original variables.
    stats: statistics of the trusted set (optionally `select_layers`-filtered), or a
      `Decomposition` of them already made.
    alphas: the grid of α > 0 (e.g. `DEFAULT_ALPHAS`).
    x_val: inputs of the split that chooses α; in the honest protocol the *noisy*
      validation split. Or a labelled source (`sap_jax.data.sources`): then ``y_val`` is
      None, every ``eval_splits`` value is a source too, and each split is read once for
      the whole grid (`sap_jax.streaming.score_alphas`).
    y_val: its labels.
    batch_size: samples per evaluation call.
    eval_splits: further name → ``(x, y)`` splits to score at every α in the same pass
      (e.g. ``{"val_clean": …, "test": …}``); they never influence the choice.
    progress: optional ``progress(done, K)``, called before each α and after the last
      with the number of α values scored so far (for a progress bar; no effect on results).
    method: how `decompose` treats each layer when ``stats`` are statistics: "auto"
      (default: eigh below `sap_jax.solve.AUTO_MIN_WIDTH`, the cost model for
      K = len(alphas) α values above), "eigh" or "solve".
    workers: layers decomposed at once (see `decompose`; default `default_workers`).

  Returns:
    A `SweepResult`; ``result.splits`` holds every split, the choosing one as "val".
  """
  check_count(batch_size, "batch_size")
  if not isinstance(stats, Decomposition):  # the options first: they need no model trace
    _checked(variables, stats, method, len(check_alpha_grid(alphas)), workers)
  alphas_np, named = checked_sweep_splits(apply_fn, variables, alphas, x_val, y_val, eval_splits)
  if isinstance(stats, Decomposition):
    decomposition = stats
  else:
    decomposition = decompose(
      variables, stats, method=method, n_alphas=len(alphas_np), workers=workers
    )
  return sweep_checked(
    apply_fn, variables, decomposition, alphas_np, named, batch_size=batch_size, progress=progress
  )


def checked_sweep_splits(
  apply_fn: ApplyFn,
  variables: Variables,
  alphas: Sequence[float],
  x_val: Any,
  y_val: Any,
  eval_splits: Mapping[str, Any] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
  """The α grid (`check_alpha_grid`) and every split of a sweep, name → ``(x, y)`` (a
  source when ``x_val`` is one), the choice split as "val", after every check, before any
  work; `sweep_checked` takes them as they are (`run_sap` checks them before scoring)."""
  alphas_np = check_alpha_grid(alphas)
  streamed = is_source(x_val)
  eval_splits = check_eval_splits(eval_splits, sources=streamed)
  named = {CHOICE_SPLIT: x_val if streamed else (x_val, y_val), **eval_splits}
  if streamed:
    no_separate_labels(y_val, "y_val")
    for name, split in named.items():
      if not is_source(split):
        raise ValueError(
          f"split {name!r}: with a source for x_val, every eval split is a source too "
          "(wrap arrays with sap_jax.data.sources.ArraySource(x, y))."
        )
    return alphas_np, named
  return alphas_np, checked_splits(apply_fn, variables, named)


def sweep_checked(
  apply_fn: ApplyFn,
  variables: Variables,
  decomposition: Decomposition,
  alphas_np: np.ndarray,
  named: Mapping[str, Any],
  *,
  batch_size: int = 512,
  progress: Callable[[int, int], None] | None = None,
) -> SweepResult:
  """`sweep_alpha` on a decomposition and on the grid and splits of `checked_sweep_splits`."""
  if any(is_source(split) for split in named.values()):  # each split read once for the grid
    from sap_jax import streaming

    scores = streaming.score_alphas(
      apply_fn, variables, decomposition, alphas_np, named, batch_size=batch_size
    )
  else:
    scores = _score_checked(
      apply_fn, variables, decomposition, alphas_np, named, batch_size, progress
    )
  choice = scores[CHOICE_SPLIT]
  best_alpha, best_acc = choose_alpha(alphas_np, choice.accuracies, choice.baseline)
  return SweepResult(
    alphas_np, choice.accuracies, float(choice.baseline), best_alpha, best_acc, scores
  )
