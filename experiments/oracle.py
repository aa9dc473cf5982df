"""What an honest SAP record lacks: the oracle α, the α curve, the spectra.

The SAP method (``sap_jax.baselines.get_method("sap")``) chooses α on the NOISY
validation split, as an honest method must. Where the clean labels are known
(synthetic noise), the published code's protocol, α chosen on the CLEAN
validation labels, is recorded beside it, clearly named ("oracle"), together
with the accuracy at every α and each layer's normalised spectrum.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["alpha_curves", "sap_extras"]


@functools.lru_cache(maxsize=1)
def _project_fn():
  """A jitted ``(variables, stats, α) → projected variables`` (compiled once per model)."""
  import jax

  import sap_jax as sj

  return jax.jit(lambda v, s, a: sj.project_params(v, sj.projections(s, a)))


def alpha_curves(apply_fn, variables, stats, alphas: Sequence[float],
                 splits: Mapping[str, tuple[Any, Any]]) -> dict[str, dict[str, Any]]:
  """Accuracy at every α on several labelled splits, and the α each split picks.

  The same rule as ``sap_jax.sweep_alpha`` (the first best α in grid order; the
  unchanged model, ``alpha None``, when no α beats it), computed with one
  jitted projection and ``sap_jax.train.evaluate`` on several splits at once
  (``sweep_alpha`` scores one split).

  Args:
    apply_fn, variables, stats: the model and its trusted-set statistics.
    alphas: the α grid.
    splits: name → (x, y), e.g. ``{"val_clean": (x_val, y_val_clean)}``.

  Returns:
    name → ``{"accuracies": [...], "baseline": float, "best_alpha": α or None,
    "best_accuracy": float}``.
  """
  from sap_jax import train

  project = _project_fn()
  acc = {name: [] for name in splits}
  base = {name: train.evaluate(apply_fn, variables, x, y)["accuracy"]
          for name, (x, y) in splits.items()}
  for a in alphas:
    projected = project(variables, stats, float(a))
    for name, (x, y) in splits.items():
      acc[name].append(train.evaluate(apply_fn, projected, x, y)["accuracy"])
  out = {}
  for name in splits:
    arr = np.asarray(acc[name], np.float64)
    best = int(np.argmax(arr))
    keep = not arr[best] > base[name]
    out[name] = {"accuracies": arr.tolist(), "baseline": float(base[name]),
                 "best_alpha": None if keep else float(alphas[best]),
                 "best_accuracy": float(base[name] if keep else arr[best])}
  return out


def sap_extras(method, result, apply_fn, variables, splits, seed: int, *, oracle: bool,
               alpha_curve: bool, spectra: bool) -> dict[str, Any]:
  """What the honest SAP record lacks: the oracle α, the α curve, the spectra.

  The statistics of the method's own trusted set are recomputed (same layers,
  batches and seed as ``run_sap``); then every α is scored on the CLEAN
  validation labels (oracle choice, the published code's protocol; the
  unchanged model is kept when no α beats it, as for the honest choice), on
  the test set (the curve) and on the noisy validation split (a check: it
  must reproduce the method's own sweep, ``alpha_curve.check_max_abs_diff``).
  """
  import sap_jax as sj

  hp = method.hparams
  trusted = np.asarray(result.details["trusted_indices"])
  out: dict[str, Any] = {"alpha": result.chosen.get("alpha")}
  if not (oracle or alpha_curve or spectra):
    return out
  start = time.perf_counter()
  stats = sj.activation_stats(apply_fn, variables,
                              sj.batched(np.asarray(splits.x_train)[trusted], hp["batch_size"]),
                              rows_per_batch=hp["rows_per_batch"], seed=seed)
  stats = sj.select_layers(stats, exclude=tuple(hp["exclude"]), layer_range=hp["layer_range"])
  alphas = [float(a) for a in hp["alphas"]]
  have_clean = bool(splits.noise_mask.any())
  named = {"test": (splits.x_test, splits.y_test), "val_noisy": (splits.x_val, splits.y_val)}
  if oracle and have_clean:
    named["val_clean"] = (splits.x_val, splits.y_val_clean)
  if oracle or alpha_curve:
    curves = alpha_curves(apply_fn, variables, stats, alphas, named)
    if "val_clean" in curves:
      clean = curves["val_clean"]
      out["alpha_oracle"] = clean["best_alpha"]
      out["val_accuracy_clean_oracle_alpha"] = clean["best_accuracy"]
      test = curves["test"]
      out["test_accuracy_oracle_alpha"] = (
          test["baseline"] if clean["best_alpha"] is None
          else test["accuracies"][alphas.index(clean["best_alpha"])])
    if alpha_curve:
      method_sweep = {float(s["alpha"]): float(s["val_accuracy"])
                      for s in result.details["settings"]}
      diff = max(abs(method_sweep[a] - v)
                 for a, v in zip(alphas, curves["val_noisy"]["accuracies"]))
      out["alpha_curve"] = {
          "alphas": alphas,
          **{name: c["accuracies"] for name, c in curves.items()},
          "baseline": {name: c["baseline"] for name, c in curves.items()},
          "check_max_abs_diff": float(diff),
      }
  if spectra:
    out["spectra"] = {}
    for path, s in stats.items():
      spectrum = np.asarray(sj.eigh_basis(s.gram).spectrum, np.float64)
      spectrum = spectrum.reshape(-1, spectrum.shape[-1]).mean(0)
      spectrum = np.sort(spectrum)[::-1][:256]
      out["spectra"]["/".join(path)] = [float(f"{v:.4g}") for v in spectrum]
  out["extras_time_s"] = time.perf_counter() - start
  return out
