"""Data sets as in-memory numpy arrays, and noisy train/val/test splits.

>>> from sap_jax.data import load_dataset, make_splits
>>> ds = load_dataset("digits")
>>> splits = make_splits(ds, noise="symmetric:0.25", val_fraction=0.1, seed=0)
"""

from sap_jax.data.base import Dataset
from sap_jax.data.registry import known_datasets, load_dataset
from sap_jax.data.splits import NoisySplits, make_splits, stratified_indices

__all__ = [
  "Dataset",
  "NoisySplits",
  "known_datasets",
  "load_dataset",
  "make_splits",
  "stratified_indices",
]
