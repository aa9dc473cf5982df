"""Two interleaved spirals: a 2-D, 2-class toy problem for fast end-to-end tests."""

from __future__ import annotations

import numbers

import numpy as np

from sap_jax.data.base import Dataset, check_int

_TURNS = 1.5  # revolutions of each arm


def _draw(rng: np.random.Generator, n_per_class: int, noise: float) -> tuple[np.ndarray, ...]:
  """n_per_class points per arm, shuffled; arm 1 is arm 0 rotated by π."""
  t = rng.uniform(0.0, 1.0, size=(2, n_per_class))
  radius = 0.1 + 0.9 * t
  angle = 2.0 * np.pi * _TURNS * t + np.pi * np.arange(2)[:, None]
  x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).reshape(-1, 2)
  x = x + noise * rng.standard_normal(x.shape)
  y = np.repeat(np.arange(2), n_per_class)
  order = rng.permutation(y.size)
  return x[order], y[order].astype(np.int32)


def load_spiral(
  *,
  root=None,
  seed: int = 0,
  n_per_class: int = 250,
  n_test_per_class: int | None = None,
  noise: float = 0.1,
) -> Dataset:
  """Samples two interleaved spirals (radius 0.1→1, 1.5 turns, arms π apart).

  Train and test come from independent streams spawned from ``seed``, so each split is
  reproducible on its own. Inputs are standardised with the train mean and std.

  Args:
    root: Unused.
    seed: Non-negative int seed.
    n_per_class: Training points per class.
    n_test_per_class: Test points per class (default: ``n_per_class``).
    noise: Std of the Gaussian jitter added to each point (radius units), >= 0.

  Returns:
    A Dataset named "spiral", inputs float32 N×2, 2 classes.
  """
  del root
  seed = check_int(seed, "seed", minimum=0)
  n_per_class = check_int(n_per_class, "n_per_class")
  n_test = n_per_class if n_test_per_class is None else n_test_per_class
  n_test = check_int(n_test, "n_test_per_class")
  if isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not noise >= 0:
    raise ValueError(f"noise must be a float >= 0 (jitter std), got {noise!r}.")
  train_ss, test_ss = np.random.SeedSequence(seed).spawn(2)
  x_tr, y_tr = _draw(np.random.default_rng(train_ss), n_per_class, float(noise))
  x_te, y_te = _draw(np.random.default_rng(test_ss), n_test, float(noise))
  mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
  return Dataset(
    name="spiral",
    x_train=((x_tr - mean) / std).astype(np.float32),
    y_train=y_tr,
    x_test=((x_te - mean) / std).astype(np.float32),
    y_test=y_te,
    class_names=("arm0", "arm1"),
  )
