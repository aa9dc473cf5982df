"""What an honest SAP record lacks: the oracle α, the α curve, the spectra.

The SAP method (``sap_jax.baselines.get_method("sap")``) chooses α on the NOISY
validation split, as an honest method must. Where the clean labels are known
(synthetic noise), the published code's protocol, α chosen on the CLEAN
validation labels, is recorded beside it, clearly named ("oracle"), together
with the accuracy at every α and each layer's normalised spectrum.

Nothing here recomputes statistics or eigendecompositions: the method's own
`sap_jax.SAPResult` carries its decomposition, and `sap_jax.score_alphas` scores the
extra splits on exactly the models the method's sweep scored.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sap_jax.data.sources import is_source, with_labels

__all__ = ["sap_extras"]


def sap_extras(
  result,
  apply_fn,
  variables,
  splits,
  *,
  oracle: bool,
  alpha_curve: bool,
  spectra: bool,
  batch_size: int = 512,
) -> dict[str, Any]:
  """The oracle α, the α curve and the spectra of one SAP cell.

  Args:
    result: the SAP method's `CorrectionResult`; ``result.details["sap_result"]`` is
      its `sap_jax.SAPResult`.
    apply_fn, variables: the vanilla model.
    splits: the cell's `NoisySplits` (clean validation labels, test set).
    oracle: record the α chosen on the CLEAN validation labels (the unchanged model is
      kept when no α beats it, as for the honest choice) and its test accuracy.
    alpha_curve: record the accuracy at every α on the test set and both validation
      labellings; ``check_max_abs_diff`` compares the noisy-validation curve with the
      method's own sweep (0 by construction: the same models, the same evaluation).
    spectra: record each layer's normalised spectrum (top 256, mean over groups).
    batch_size: evaluation batch size (the method's sweep uses max(its batch, 512)).
  """
  import sap_jax as sj
  from sap_jax.layers import path_name

  sap = result.details["sap_result"]
  out: dict[str, Any] = {"alpha": result.chosen.get("alpha")}
  if not (oracle or alpha_curve or spectra):
    return out
  start = time.perf_counter()
  alphas = [float(a) for a in sap.sweep.alphas]
  named = {"test": (splits.x_test, splits.y_test), "val_noisy": (splits.x_val, splits.y_val)}
  if oracle and bool(splits.noise_mask.any()):
    named["val_clean"] = (splits.x_val, splits.y_val_clean)
  if oracle or alpha_curve:
    if is_source(splits.x_val):  # streamed splits: each read once for the whole grid
      from sap_jax import streaming

      sources = {name: with_labels(x, y)[0] for name, (x, y) in named.items()}
      curves = streaming.score_alphas(
        apply_fn, variables, sap.decomposition, alphas, sources, batch_size=batch_size
      )
    else:
      curves = sj.score_alphas(
        apply_fn, variables, sap.decomposition, alphas, named, batch_size=batch_size
      )
    if "val_clean" in curves:
      clean = curves["val_clean"]
      alpha_oracle, acc_oracle = sj.choose_alpha(alphas, clean.accuracies, clean.baseline)
      test = curves["test"]
      out["alpha_oracle"] = alpha_oracle
      out["val_accuracy_clean_oracle_alpha"] = acc_oracle
      out["test_accuracy_oracle_alpha"] = (
        test.baseline
        if alpha_oracle is None
        else float(test.accuracies[alphas.index(alpha_oracle)])
      )
    if alpha_curve:
      diff = float(np.max(np.abs(curves["val_noisy"].accuracies - sap.sweep.accuracies)))
      out["alpha_curve"] = {
        "alphas": alphas,
        **{name: c.accuracies.tolist() for name, c in curves.items()},
        "baseline": {name: float(c.baseline) for name, c in curves.items()},
        "check_max_abs_diff": diff,
      }
  if spectra:
    out["spectra"] = {}
    for path, spectrum in sap.decomposition.spectra.items():
      spectrum = np.asarray(spectrum, np.float64)
      spectrum = spectrum.reshape(-1, spectrum.shape[-1]).mean(0)
      spectrum = np.sort(spectrum)[::-1][:256]
      out["spectra"][path_name(path)] = [float(f"{v:.4g}") for v in spectrum]
  out["extras_time_s"] = time.perf_counter() - start
  return out
