"""Shared cases of the noise tests: balanced labels and a permuted class hierarchy."""

from __future__ import annotations

import numpy as np


def balanced(num_classes, per_class, seed=0):
  labels = np.repeat(np.arange(num_classes), per_class)
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def permuted_hierarchy(num_coarse=20, per_coarse=5, per_fine=30, seed=0):
  """Fine labels whose superclass is a random permutation, not index blocks of 5."""
  rng = np.random.default_rng(seed)
  fine_to_coarse = rng.permutation(np.repeat(np.arange(num_coarse), per_coarse))
  fine = balanced(num_coarse * per_coarse, per_fine, seed)
  return fine, fine_to_coarse[fine].astype(np.int32), fine_to_coarse
