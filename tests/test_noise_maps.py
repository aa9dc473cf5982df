"""sap_jax.noise_maps: the standard asymmetric class maps and the superclass relation."""

import numpy as np
import pytest

from sap_jax import noise_maps
from tests.noise_cases import permuted_hierarchy


def test_known_maps():
  assert noise_maps.CIFAR10_ASYMMETRIC_MAP == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
  assert noise_maps.MNIST_ASYMMETRIC_MAP == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}
  for name in ("cifar10", "cifar10n", "CIFAR10", "tfds:cifar10_n"):
    assert noise_maps.known_class_map(name) == dict(noise_maps.CIFAR10_ASYMMETRIC_MAP)
  for name in ("digits", "mnist1d", "tfds:mnist"):
    assert noise_maps.known_class_map(name) == dict(noise_maps.MNIST_ASYMMETRIC_MAP)


def test_cifar100_map_stays_in_true_superclass_under_permutation():
  fine, coarse, f2c = permuted_hierarchy()
  cmap = noise_maps.cifar100_asymmetric_map(fine, coarse)
  assert sorted(cmap) == list(range(100))
  for src, dst in cmap.items():
    assert src != dst
    assert f2c[src] == f2c[dst]
  # Within each superclass the map is one cycle through all 5 members.
  for c in range(20):
    members = sorted(np.flatnonzero(f2c == c))
    seen, cur = [], members[0]
    for _ in members:
      seen.append(cur)
      cur = cmap[cur]
    assert cur == members[0] and sorted(seen) == members
  # Index blocks of 5 would (with overwhelming probability) leave the superclass.
  assert any(f2c[i] != f2c[(i // 5) * 5 + (i + 1) % 5] for i in range(100))


def test_known_class_map_error_lists_datasets():
  with pytest.raises(ValueError, match="maps exist for: .*cifar10.*digits.*mnist1d"):
    noise_maps.known_class_map("imagenet")


def test_superclass_relation():
  fine = np.array([0, 1, 2, 3, 0, 3])
  coarse = np.array([5, 5, 7, 7, 5, 7])
  relation = noise_maps.fine_to_coarse(fine, coarse)
  assert relation == {0: 5, 1: 5, 2: 7, 3: 7}
  assert noise_maps.superclass_members(relation) == {5: [0, 1], 7: [2, 3]}
  with pytest.raises(ValueError, match="more than one coarse"):
    noise_maps.fine_to_coarse(np.array([0, 0]), np.array([1, 2]))
  with pytest.raises(ValueError, match="single fine class"):
    noise_maps.superclass_members({0: 1, 1: 2, 2: 2})
