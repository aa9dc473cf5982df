"""Activation statistics: the uncentred second moment of every layer's input.

SAP needs, for each `nn.Dense`, `nn.DenseGeneral` and `nn.Conv` layer of a model, the
representation matrix R whose rows are the layer's input vectors on the trusted set. Only
the Gram matrix C = RᵀR (d×d) is ever needed: its eigenvectors are the right singular
vectors of R and its eigenvalues the squared singular values. So the rows are reduced to C
inside the jitted forward pass, batch by batch, and are never materialised for the whole
set. Layers are found by interception (`flax.linen.intercept_methods`): any Linen model
works without per-model code.

One capability per module:

* `sap_jax.stats.conv`: conv geometry and im2col as pure array functions (`ConvGeometry`,
  the one `nn.Conv` adapter `conv_geometry`, `conv_patches`).
* `sap_jax.stats.rows`: what a layer's representation rows are (`layer_rows`, `Layout`,
  the kinds `DENSE`, `DENSE_GENERAL`, `CONV`), row budgets (`sample_rows`, `rows_at`).
* `sap_jax.stats.gram`: Gram kernels C = RᵀR (`gram_matrix`, `conv_gram_by_shifts`),
  their cost model (`choose_shift_plan`, `direct_cost`, `shift_cost`), and one layer
  call's Gram matrix by the kernel chosen (`layer_gram`, `layer_gram_cost`).
* `sap_jax.stats.observe`: the layer-call observer (`observe_linen_calls`, `LayerCall`,
  `report_call` for other model APIs, `LiftedTransformError`, `select_calls`: only the
  chosen call of a layer reported).
* `sap_jax.stats.collect`: what is collected through the observer: `activation_stats`
  (streamed `LayerStats`), `activation_rows`, `intercepted_rows`, `gram_costs`.
* `sap_jax.stats.calls`: a shape-only trace of a forward's covered layer calls, to run
  before any work (`layer_calls`: rows per call; a lifted transform refused;
  `repeated_layers`: layers called more than once per forward; `chosen_calls`: the
  user's ``calls``, which call of such a layer counts, checked against the trace).

The public names are re-exported here, flat.
"""

from __future__ import annotations

from sap_jax.batching import batched
from sap_jax.stats.collect import (
  JITTED,
  LayerStats,
  activation_rows,
  activation_stats,
  gram_costs,
  intercepted_rows,
)
from sap_jax.stats.conv import (
  ConvGeometry,
  channel_major_order,
  conv_geometry,
  conv_patches,
  extract_patches,
  extract_patches_at,
  extract_patches_offset_major,
  padded_input,
)
from sap_jax.stats.gram import (
  GRAM_BLOCK_MIN_DIM,
  GRAM_MAX_BLOCKS,
  SHIFT_MAX_COST_RATIO,
  SHIFT_MIN_CHANNELS,
  ShiftPlan,
  choose_shift_plan,
  conv_gram_by_shifts,
  direct_cost,
  gram_blocks,
  gram_matrix,
  layer_gram,
  layer_gram_cost,
  shift_cost,
  shift_plan,
)
from sap_jax.stats.observe import LayerCall, OnCall, observe_linen_calls
from sap_jax.stats.rows import (
  CONV,
  DENSE,
  DENSE_GENERAL,
  Layout,
  is_supported,
  layer_rows,
  rows_at,
  rows_shape,
  sample_rows,
)
from sap_jax.types import ApplyFn, Path

__all__ = [
  "ApplyFn",
  "CONV",
  "ConvGeometry",
  "DENSE",
  "DENSE_GENERAL",
  "GRAM_BLOCK_MIN_DIM",
  "GRAM_MAX_BLOCKS",
  "JITTED",
  "LayerCall",
  "LayerStats",
  "Layout",
  "OnCall",
  "Path",
  "SHIFT_MAX_COST_RATIO",
  "SHIFT_MIN_CHANNELS",
  "ShiftPlan",
  "activation_rows",
  "activation_stats",
  "batched",
  "channel_major_order",
  "choose_shift_plan",
  "conv_geometry",
  "conv_gram_by_shifts",
  "conv_patches",
  "direct_cost",
  "extract_patches",
  "extract_patches_at",
  "extract_patches_offset_major",
  "gram_blocks",
  "gram_costs",
  "gram_matrix",
  "intercepted_rows",
  "is_supported",
  "layer_gram",
  "layer_gram_cost",
  "layer_rows",
  "observe_linen_calls",
  "padded_input",
  "rows_at",
  "rows_shape",
  "sample_rows",
  "shift_cost",
  "shift_plan",
]
