"""Per-layer spectrum summaries: what the activation statistics say about each layer.

A layer's normalised spectrum σ̃ (its Gram matrix's eigenvalues over their sum) tells how
many directions carry its input energy; `stats_summary` reduces it to a JSON-friendly
effective rank and top-direction energy per layer. Nothing here imports the rest of the
SAP core: it reads `LayerStats`' ``gram``, ``count`` and ``layout`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from sap_jax.layers import path_name
from sap_jax.types import Path

if TYPE_CHECKING:
  from sap_jax.stats import LayerStats


def stats_summary(
  stats: Mapping[Path, LayerStats],
  spectra: Mapping[Path, Any] | None = None,
  *,
  missing: bool = True,
) -> dict[str, dict[str, Any]]:
  """A JSON-friendly per-layer summary: kind, d, groups, rows, effective rank.

  Args:
    stats: per-layer statistics.
    spectra: optional normalised spectra σ̃ per layer (``Basis.spectrum`` of an
      eigendecomposition already made, e.g. by `sweep_alpha`); without them the
      eigenvalues are computed here (float64, on the host).
    missing: compute the spectrum of a layer ``spectra`` lacks (default); False leaves
      its ``effective_rank`` and ``top_energy`` None (e.g. a layer the solve path
      decomposed, whose d³ host eigendecomposition would cost more than the correction).

  Returns:
    ``{layer name: {kind, dim, groups, rows, effective_rank, top_energy}}``, where
    effective_rank = exp(entropy of σ̃) and top_energy = max σ̃ (means over groups).
  """
  out = {}
  for path, s in stats.items():
    summary = {
      "kind": s.layout.kind,
      "dim": s.layout.dim,
      "groups": s.layout.groups,
      "rows": int(s.count),
      "effective_rank": None,
      "top_energy": None,
    }
    out[path_name(path)] = summary
    if spectra is not None and path in spectra:
      p = np.asarray(spectra[path], np.float64)
    elif not missing:
      continue
    else:
      eig = np.clip(np.linalg.eigvalsh(np.asarray(s.gram, np.float64)), 0.0, None)
      p = eig / np.maximum(eig.sum(-1, keepdims=True), np.finfo(np.float64).tiny)
    logp = np.log(np.where(p > 0, p, 1.0))
    entropy = -np.sum(p * logp, axis=-1)
    summary["effective_rank"] = float(np.mean(np.exp(entropy)))
    summary["top_energy"] = float(np.mean(np.max(p, axis=-1)))
  return out
