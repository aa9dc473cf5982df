"""The eigendecompositions of a correction spread over a mesh: once per layer, not per device.

Statistics combined over a mesh are replicated: every device holds every layer's Gram
matrix, and a jitted ``eigh`` of a replicated array runs on every device, the same work
repeated (on 8 devices, 8 times). `spread_eigh` gives each layer to one device instead
(`spread_plan`: the largest layers first, each to the least-loaded device), runs every
layer's eigh in one program (`jax.shard_map`, a `jax.lax.cond` per layer on the device
index: only the layer's owner executes the eigh branch, the others produce zeros) and
shares the bases with one all-reduce,
in which every layer's basis is non-zero on exactly one device (the sum adds zeros to it:
the result equals one device's ``eigh`` to float round-off, often bit for bit; two
contributing devices would double it).

A round r ≥ 1 of `sap_jax.correction` decomposes Qᵀ C Q (`congruence`) rather than C:
given ``transforms``, the owning device also forms that product, so the O(d³) matrix
products are not repeated on every device either.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sap_jax import projection as proj
from sap_jax import sharding as shd
from sap_jax.types import Path


def congruence(q: jax.Array, gram: jax.Array) -> jax.Array:
  """Qᵀ C Q (batched over groups): the Gram matrix of the rows a Q (pure, traceable)."""
  return jnp.einsum(
    "...ki,...kl,...lj->...ij", q, gram, q, precision=jax.lax.Precision.HIGHEST
  ).astype(gram.dtype)


def assign_layers(costs: list[float], devices: int) -> list[list[int]]:
  """Layer indices per device: the largest cost first, each to the least-loaded device.

  Args:
    costs: a cost per layer (d³ · groups for an eigh).
    devices: how many devices share them.

  Returns:
    ``devices`` lists of layer indices (some empty when there are fewer layers).
  """
  plan: list[list[int]] = [[] for _ in range(devices)]
  load = [0.0] * devices
  for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
    d = min(range(devices), key=lambda k: (load[k], k))
    plan[d].append(i)
    load[d] += costs[i]
  return plan


def eigh_cost(shape: Sequence[int]) -> float:
  """The cost `assign_layers` balances for a Gram matrix of ``shape`` (…, d, d): groups·d³."""
  return float(np.prod(shape[:-2], dtype=np.float64) * shape[-1] ** 3)


def spread_plan(shapes: Sequence[Sequence[int]], devices: int) -> np.ndarray:
  """The table `spread_eigh` runs: row k lists device k's layer indices, −1 pads.

  Args:
    shapes: each layer's Gram matrix shape (d, d) or (G, d, d), in order.
    devices: the devices on the mesh axis.

  Returns:
    int32 ``(devices, slots)``; every layer index appears exactly once (each layer's
    eigh runs on one device), slots = the most layers any device got.
  """
  plan = assign_layers([eigh_cost(s) for s in shapes], devices)
  slots = max(1, max(len(p) for p in plan))
  table = np.full((devices, slots), -1, np.int32)
  for d, layers in enumerate(plan):
    table[d, : len(layers)] = layers
  return table


@functools.partial(jax.jit, static_argnames=("owners", "mesh", "axis", "congruent"))
def _spread(arrays, *, owners: tuple[int, ...], mesh: Mesh, axis: str, congruent: bool):
  n = len(owners)

  def body(*arrays):
    grams, qs = arrays[:n], arrays[n:]
    me = jax.lax.axis_index(axis)
    outs = []
    for i, (gram, owner) in enumerate(zip(grams, owners)):

      def mine(i=i):
        return proj.eigh_basis(congruence(qs[i], grams[i]) if congruent else grams[i])

      def other(g=gram):
        return proj.Basis(jnp.zeros(g.shape[:-1], g.dtype), jnp.zeros(g.shape, g.dtype))

      outs.append(jax.lax.cond(me == owner, mine, other))  # the eigh runs on its owner only
    return jax.tree_util.tree_map(lambda a: jax.lax.psum(a, axis), tuple(outs))

  in_specs = tuple(P() for _ in arrays)
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)(*arrays)


JITTED = {"spread_eigh.spread": _spread}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def _spread_args(grams, mesh, axis, transforms):
  paths = list(grams)
  if transforms is not None and set(transforms) != set(paths):
    raise ValueError(
      f"spread_eigh: transforms cover {sorted(transforms)}, the Gram matrices "
      f"{sorted(paths)}; give one Q per layer."
    )
  table = spread_plan([g.shape for g in grams.values()], shd.num_shards(mesh, axis))
  owners = [0] * len(paths)
  for device, row in enumerate(table):
    for i in row[row >= 0]:
      owners[i] = device
  arrays = list(grams.values())
  if transforms is not None:
    arrays += [transforms[p] for p in paths]
  static = dict(owners=tuple(owners), mesh=mesh, axis=axis, congruent=transforms is not None)
  return paths, tuple(shd.replicate(arrays, mesh)), static


def spread_eigh(
  grams: Mapping[Path, jax.Array],
  mesh: Mesh,
  axis: str = shd.DATA_AXIS,
  transforms: Mapping[Path, jax.Array] | None = None,
) -> dict[Path, proj.Basis]:
  """`sap_jax.projection.eigh_basis` of every layer's Gram matrix, each computed on one
  device of ``mesh``'s ``axis`` (`spread_plan`) and then held by all of them (replicated).

  Args:
    grams: path → C (d, d) or (G, d, d), replicated on ``mesh`` (the combined
      statistics of `sap_jax.activation_stats` on sharded batches) or host arrays.
    mesh: the mesh.
    axis: the mesh axis whose devices share the layers.
    transforms: optional path → Q (same shape as C): decompose Qᵀ C Q (`congruence`)
      instead of C, the product also formed on the owning device only.

  Returns:
    path → `Basis`, replicated, equal to `eigh_basis` of each (transformed) Gram matrix
    on one device.
  """
  if not grams:
    return {}
  paths, arrays, static = _spread_args(grams, mesh, axis, transforms)
  return dict(zip(paths, _spread(arrays, **static)))


def spread_hlo(
  grams: Mapping[Path, jax.Array],
  mesh: Mesh,
  axis: str = shd.DATA_AXIS,
  transforms: Mapping[Path, jax.Array] | None = None,
) -> str:
  """The compiled HLO text of the program `spread_eigh` runs for these arguments (for
  tests and benchmarks that count its collectives and the bytes they move)."""
  _, arrays, static = _spread_args(grams, mesh, axis, transforms)
  return _spread.lower(arrays, **static).compile().as_text()
