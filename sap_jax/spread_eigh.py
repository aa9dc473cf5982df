"""The eigendecompositions of a correction spread over a mesh: once per layer, not per device.

Statistics combined over a mesh are replicated: every device holds every layer's Gram
matrix, and a jitted ``eigh`` of a replicated array runs on every device, the same work
repeated (on 8 devices, 8 times). `spread_eigh` gives each layer to one device instead
(the largest layers first, each to the least-loaded device), runs each device's layers
in one program (`jax.shard_map`, a `jax.lax.switch` per slot: a device executes only
the branches of its own layers) and shares the bases with one all-reduce, in which every
layer's basis is non-zero on exactly one device (so the sum is exact).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from sap_jax import projection as proj
from sap_jax import sharding as shd
from sap_jax.types import Path


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


@functools.partial(jax.jit, static_argnames=("mesh", "axis"))
def _spread(table, grams, *, mesh: Mesh, axis: str):
  def body(table, *grams):
    row = table[0]
    outs = tuple(
      proj.Basis(jnp.zeros(g.shape[:-1], g.dtype), jnp.zeros(g.shape, g.dtype)) for g in grams
    )

    def branch(i):
      def run(outs):
        return outs[:i] + (proj.eigh_basis(grams[i]),) + outs[i + 1 :]

      return run

    branches = [lambda outs: outs] + [branch(i) for i in range(len(grams))]
    for j in range(row.shape[0]):
      outs = jax.lax.switch(row[j] + 1, branches, outs)
    return jax.tree_util.tree_map(lambda a: jax.lax.psum(a, axis), outs)

  in_specs = (P(axis), *([P()] * len(grams)))
  return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=P(), check_vma=False)(
    table, *grams
  )


JITTED = {"spread_eigh.spread": _spread}
"""The module-level compiled programs (see `sap_jax.compile_cache`)."""


def spread_eigh(
  grams: Mapping[Path, jax.Array], mesh: Mesh, axis: str = shd.DATA_AXIS
) -> dict[Path, proj.Basis]:
  """`sap_jax.projection.eigh_basis` of every layer's Gram matrix, each computed on one
  device of ``mesh``'s ``axis`` and then held by all of them (replicated).

  Args:
    grams: path → C (d, d) or (G, d, d), replicated on ``mesh`` (the combined
      statistics of `sap_jax.activation_stats` on sharded batches) or host arrays.
    mesh: the mesh.
    axis: the mesh axis whose devices share the layers.

  Returns:
    path → `Basis`, replicated, equal to `eigh_basis` of each Gram matrix on one device.
  """
  paths = list(grams)
  if not paths:
    return {}
  devices = shd.num_shards(mesh, axis)
  costs = [
    float(np.prod(g.shape[:-2], dtype=np.float64) * g.shape[-1] ** 3) for g in grams.values()
  ]
  plan = assign_layers(costs, devices)
  slots = max(len(p) for p in plan)
  table = np.full((devices, slots), -1, np.int32)
  for d, layers in enumerate(plan):
    table[d, : len(layers)] = layers
  table = jax.make_array_from_callback(
    table.shape, shd.batch_sharding(mesh, 2, axis), table.__getitem__
  )
  grams_r = tuple(shd.replicate(list(grams.values()), mesh))
  bases = _spread(table, grams_r, mesh=mesh, axis=axis)
  return dict(zip(paths, bases))
