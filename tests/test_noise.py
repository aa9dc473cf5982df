"""Tests for sap_jax.noise: exact counts, distributions, determinism, specs and errors."""

import numpy as np
import pytest
from scipy import stats

from sap_jax import noise as nz
from sap_jax.noise import NoiseSpec
from tests.noise_cases import balanced, permuted_hierarchy

# ---------------------------------------------------------------------------- symmetric


@pytest.mark.parametrize("rate,n", [(0.0, 100), (0.1, 1000), (0.25, 999), (0.5, 7), (0.99, 10)])
def test_symmetric_flips_exactly_round_rate_n(rate, n):
  labels = np.random.default_rng(1).integers(0, 10, size=n)
  noisy, mask = nz.symmetric(labels, 10, rate, seed=3)
  assert mask.sum() == round(rate * n)
  np.testing.assert_array_equal(mask, noisy != labels)
  assert noisy.dtype == np.int32 and mask.dtype == bool
  assert noisy.min() >= 0 and noisy.max() < 10


def test_symmetric_never_keeps_label_and_is_uniform_over_other_classes():
  c = 10
  labels = balanced(c, 10_000)
  noisy, mask = nz.symmetric(labels, c, 0.5, seed=0)
  assert np.all(noisy[mask] != labels[mask])
  # The flipped samples themselves are uniform over the data set...
  assert stats.chisquare(np.bincount(labels[mask], minlength=c)).pvalue > 1e-3
  # ...and for every true class the new label is uniform over the C-1 others.
  for k in range(c):
    new = noisy[mask & (labels == k)]
    counts = np.bincount(new, minlength=c)
    assert counts[k] == 0
    others = np.delete(counts, k)
    assert stats.chisquare(others).pvalue > 1e-3, (k, others)


def test_symmetric_two_classes_swaps():
  labels = balanced(2, 50)
  noisy, mask = nz.symmetric(labels, 2, 0.3, seed=0)
  np.testing.assert_array_equal(noisy[mask], 1 - labels[mask])


def test_symmetric_deterministic_per_seed():
  labels = balanced(10, 100)
  a = nz.symmetric(labels, 10, 0.25, seed=7)
  b = nz.symmetric(labels, 10, 0.25, seed=7)
  c = nz.symmetric(labels, 10, 0.25, seed=8)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert not np.array_equal(a[1], c[1])


def test_symmetric_does_not_modify_input():
  labels = balanced(10, 20)
  before = labels.copy()
  nz.symmetric(labels, 10, 0.5, seed=0)
  np.testing.assert_array_equal(labels, before)


# ---------------------------------------------------------------------------- asymmetric


def test_asymmetric_cifar10_map_touches_only_sources_and_sends_to_targets():
  labels = balanced(10, 101)
  rate = 0.3
  noisy, mask = nz.asymmetric(labels, 10, rate, seed=0, class_map=nz.CIFAR10_ASYMMETRIC_MAP)
  np.testing.assert_array_equal(mask, noisy != labels)
  for c in range(10):
    in_c = labels == c
    if c in nz.CIFAR10_ASYMMETRIC_MAP:
      assert mask[in_c].sum() == round(rate * 101)
      assert np.all(noisy[in_c & mask] == nz.CIFAR10_ASYMMETRIC_MAP[c])
    else:
      assert not mask[in_c].any()


def test_asymmetric_swap_uses_clean_labels():
  # cat<->dog: every cat flipped becomes dog and vice versa, independently.
  labels = balanced(10, 40)
  noisy, mask = nz.asymmetric(labels, 10, 0.5, seed=1, class_map={3: 5, 5: 3})
  assert np.all(noisy[mask & (labels == 3)] == 5)
  assert np.all(noisy[mask & (labels == 5)] == 3)
  assert mask.sum() == 40


def test_asymmetric_transition_matrix():
  c = 4
  labels = balanced(c, 5000)
  t = np.eye(c) * 0.6
  t[0, 1] = 0.4
  t[1, 2] = 0.4
  t[2, 3] = 0.4
  t[3, 3] = 1.0
  noisy, mask = nz.asymmetric(labels, c, 0.0, seed=0, transition=t)
  np.testing.assert_array_equal(mask, noisy != labels)
  assert not mask[labels == 3].any()
  for k in range(3):
    new = noisy[labels == k]
    assert set(np.unique(new)) == {k, k + 1}
    assert abs(np.mean(new != k) - 0.4) < 0.03


def test_asymmetric_deterministic():
  labels = balanced(10, 30)
  a = nz.asymmetric(labels, 10, 0.4, 5, class_map=nz.MNIST_ASYMMETRIC_MAP)
  b = nz.asymmetric(labels, 10, 0.4, 5, class_map=nz.MNIST_ASYMMETRIC_MAP)
  np.testing.assert_array_equal(a[0], b[0])


# ---------------------------------------------------------------------------- CIFAR-100


def test_cifar100_known_map_and_noise():
  fine, coarse, f2c = permuted_hierarchy(seed=1)
  cmap = nz.known_class_map("cifar100", fine=fine, coarse=coarse)
  noisy, mask = nz.apply_noise(
    "asymmetric:0.2", fine, 100, seed=0, coarse_labels=coarse, dataset_name="cifar100n"
  )
  assert mask.sum() == 100 * round(0.2 * 30)
  np.testing.assert_array_equal(noisy[mask], [cmap[f] for f in fine[mask]])
  np.testing.assert_array_equal(f2c[noisy], f2c[fine])


# ---------------------------------------------------------------------------- hierarchical


def test_hierarchical_stays_in_coarse_class_with_exact_count():
  fine, coarse, f2c = permuted_hierarchy(seed=2)
  noisy, mask = nz.hierarchical(fine, coarse, 0.25, seed=0)
  assert mask.sum() == round(0.25 * fine.size)
  np.testing.assert_array_equal(mask, noisy != fine)
  np.testing.assert_array_equal(f2c[noisy], coarse)
  # Uniform over the 4 siblings of each flipped sample (pooled over superclasses).
  sibling_rank = []
  for f, g in zip(fine[mask], noisy[mask]):
    members = sorted(np.flatnonzero(f2c == f2c[f]))
    sibling_rank.append((members.index(g) - members.index(f)) % 5)
  counts = np.bincount(sibling_rank, minlength=5)
  assert counts[0] == 0
  assert stats.chisquare(counts[1:]).pvalue > 1e-3


def test_hierarchical_deterministic_and_seed_dependent():
  fine, coarse, _ = permuted_hierarchy(seed=3)
  a = nz.hierarchical(fine, coarse, 0.1, 4)
  b = nz.hierarchical(fine, coarse, 0.1, 4)
  c = nz.hierarchical(fine, coarse, 0.1, 5)
  np.testing.assert_array_equal(a[0], b[0])
  assert not np.array_equal(a[0], c[0])


def test_hierarchical_singleton_superclass_raises():
  fine = np.array([0, 1, 2, 2, 0])
  coarse = np.array([0, 0, 1, 1, 0])
  with pytest.raises(ValueError, match=r"coarse classes \[1\] contain a single fine class"):
    nz.hierarchical(fine, coarse, 0.2, 0)
  with pytest.raises(ValueError, match="single fine class"):
    nz.cifar100_asymmetric_map(fine, coarse)


def test_inconsistent_fine_to_coarse_raises():
  with pytest.raises(ValueError, match="more than one coarse class"):
    nz.hierarchical(np.array([0, 0, 1]), np.array([0, 1, 0]), 0.2, 0)


# ---------------------------------------------------------------------------- apply_noise


def test_apply_noise_none_returns_copy_and_empty_mask():
  labels = balanced(3, 4)
  noisy, mask = nz.apply_noise("none", labels, 3, 0)
  np.testing.assert_array_equal(noisy, labels)
  assert noisy is not labels and noisy.dtype == np.int32
  assert mask.dtype == bool and not mask.any()


def test_apply_noise_dispatch_matches_functions():
  labels = balanced(10, 50)
  np.testing.assert_array_equal(
    nz.apply_noise(NoiseSpec("symmetric", 0.2), labels, 10, 3)[0],
    nz.symmetric(labels, 10, 0.2, 3)[0],
  )
  np.testing.assert_array_equal(
    nz.apply_noise("asymmetric:0.2", labels, 10, 3, dataset_name="cifar10")[0],
    nz.asymmetric(labels, 10, 0.2, 3, class_map=nz.CIFAR10_ASYMMETRIC_MAP)[0],
  )
  np.testing.assert_array_equal(
    nz.apply_noise("asymmetric:0.2:1>2", labels, 10, 3)[0],
    nz.asymmetric(labels, 10, 0.2, 3, class_map={1: 2})[0],
  )


# ---------------------------------------------------------------------------- NoiseSpec


@pytest.mark.parametrize(
  "text",
  [
    "none",
    "symmetric:0.25",
    "symmetric:0.0",
    "asymmetric:0.1",
    "hierarchical:0.25",
    "human:worse",
    "human:noisy100",
    "asymmetric:0.2:3>5,5>3",
    "symmetric:0.123456789",
  ],
)
def test_noisespec_parse_round_trip(text):
  spec = NoiseSpec.parse(text)
  assert str(spec) == text
  assert NoiseSpec.parse(str(spec)) == spec
  assert hash(NoiseSpec.parse(text)) == hash(spec)


def test_noisespec_fields():
  spec = NoiseSpec.parse(" Symmetric : 0.25 ")
  assert (spec.kind, spec.rate, spec.class_map, spec.variant) == ("symmetric", 0.25, None, None)
  assert NoiseSpec.parse("human:aggre").variant == "aggre"
  assert dict(NoiseSpec.parse("asymmetric:0.1:9>1").class_map) == {9: 1}
  assert NoiseSpec.parse(spec) is spec


def test_noisespec_with_transition_equality_and_str():
  t = np.full((3, 3), 1 / 3)
  a = NoiseSpec("asymmetric", transition=t)
  assert a == NoiseSpec("asymmetric", transition=t.copy())
  assert a != NoiseSpec("asymmetric", transition=np.eye(3))
  assert str(a) == "asymmetric:transition[3x3]"
  with pytest.raises(ValueError):
    NoiseSpec.parse(str(a))


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(kind="gaussian"), "unknown noise kind"),
    (dict(kind="symmetric", rate=1.0), r"rate must be in \[0, 1\)"),
    (dict(kind="symmetric", rate=-0.1), r"rate must be in \[0, 1\)"),
    (dict(kind="symmetric", rate="0.1"), "rate must be a float"),
    (dict(kind="none", rate=0.1), "takes no rate"),
    (dict(kind="human"), "variant"),
    (dict(kind="human", variant="wrose"), "aggre, worse"),
    (dict(kind="symmetric", rate=0.1, variant="worse"), "only applies to kind='human'"),
    (dict(kind="symmetric", rate=0.1, class_map={1: 2}), "only apply to kind='asymmetric'"),
    (dict(kind="asymmetric", rate=0.1, class_map={1: 1}), "to itself"),
    (dict(kind="asymmetric", rate=0.1, transition=np.eye(2)), "leave rate at 0.0"),
    (dict(kind="asymmetric", class_map={0: 1}, transition=np.eye(2)), "not both"),
    (dict(kind="asymmetric", transition=np.ones((2, 2))), "row-stochastic"),
  ],
)
def test_noisespec_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    NoiseSpec(**kwargs)


@pytest.mark.parametrize(
  "text,match",
  [
    ("bogus:0.1", "unknown kind"),
    ("symmetric", "write 'symmetric:<rate>'"),
    ("symmetric:abc", "cannot parse the rate"),
    ("symmetric:25", r"rate must be in \[0, 1\)"),
    ("none:0.1", "takes no arguments"),
    ("human", "human:<variant>"),
    ("asymmetric:0.1:3-5", "src>dst"),
    ("symmetric:0.1:3>5", "write 'symmetric:<rate>'"),
  ],
)
def test_noisespec_parse_errors(text, match):
  with pytest.raises(ValueError, match=match):
    NoiseSpec.parse(text)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda y: nz.symmetric(y, 10, 1.0, 0), r"rate must be in \[0, 1\)"),
    (lambda y: nz.symmetric(y, 10, -0.5, 0), r"rate must be in \[0, 1\)"),
    (lambda y: nz.symmetric(y, 1, 0.1, 0), "num_classes must be >= 2"),
    (lambda y: nz.symmetric(y, 2.5, 0.1, 0), "num_classes must be an int"),
    (lambda y: nz.symmetric(y, 5, 0.1, 0), r"must lie in \[0, 5\)"),
    (lambda y: nz.symmetric(y - 1, 10, 0.1, 0), r"must lie in \[0, 10\)"),
    (lambda y: nz.symmetric(y.astype(float), 10, 0.1, 0), "integer array"),
    (lambda y: nz.symmetric(y[:, None], 10, 0.1, 0), "must be 1-D"),
    (lambda y: nz.symmetric(y[:0], 10, 0.1, 0), "empty"),
    (lambda y: nz.symmetric(y, 10, 0.1, -1), "seed must be a non-negative int"),
    (lambda y: nz.asymmetric(y, 10, 0.1, 0, class_map={3: 10}), "outside the class range"),
    (lambda y: nz.asymmetric(y, 10, 0.1, 0, class_map={-1: 2}), "outside the class range"),
    (lambda y: nz.asymmetric(y, 10, 0.1, 0, class_map={4: 4}), "to itself"),
    (lambda y: nz.asymmetric(y, 10, 0.1, 0, class_map={}), "class_map is empty"),
    (lambda y: nz.asymmetric(y, 10, 0.1, 0), "exactly one of class_map"),
    (lambda y: nz.asymmetric(y, 10, 0.0, 0, transition=np.eye(9)), "num_classes=10"),
    (lambda y: nz.asymmetric(y, 10, 0.0, 0, transition=np.ones(10)), "square"),
    (lambda y: nz.asymmetric(y, 10, 0.0, 0, transition=np.eye(10) * 2), "row-stochastic"),
    (lambda y: nz.asymmetric(y, 10, 0.0, 0, transition=-np.eye(10)), "non-negative"),
    (lambda y: nz.asymmetric(y, 10, 0.2, 0, transition=np.eye(10)), "pass rate=0.0"),
    (lambda y: nz.apply_noise("asymmetric:0.1", y, 10, 0), "needs a class map"),
    (
      lambda y: nz.apply_noise("asymmetric:0.1", y, 10, 0, dataset_name="svhn"),
      "no standard asymmetric class map.*cifar10.*class_map=",
    ),
    (
      lambda y: nz.apply_noise("asymmetric:0.1", y, 10, 0, dataset_name="cifar100"),
      "pass fine=dataset.y_train",
    ),
    (lambda y: nz.apply_noise("hierarchical:0.1", y, 10, 0), "needs coarse_labels"),
    (lambda y: nz.hierarchical(y, None, 0.1, 0), "coarse_labels is None"),
    (lambda y: nz.hierarchical(y, y[:-1], 0.1, 0), "one coarse label per sample"),
    (lambda y: nz.apply_noise("human:worse", y, 10, 0), "make_splits"),
    (lambda y: nz.apply_noise(0.2, y, 10, 0), "must be a string"),
  ],
)
def test_documented_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call(balanced(10, 5))


# ---------------------------------------------------------------------------- modules


def test_class_maps_are_importable_from_noise():
  from sap_jax import noise_maps

  for name in noise_maps.__all__:
    assert getattr(nz, name) is getattr(noise_maps, name), name
  assert set(nz.__all__) >= {"CIFAR10_ASYMMETRIC_MAP", "known_class_map", "NoiseSpec"}


def test_majority_lost_names_the_limit_of_each_kind():
  from sap_jax.noise import majority_lost

  assert majority_lost("symmetric:0.85", 10) is None
  assert "below 0.9" in majority_lost("symmetric:0.9", 10)
  assert "below 0.5" in majority_lost("symmetric:0.5", 2)
  assert majority_lost("asymmetric:0.45", 10) is None
  assert "below 0.5" in majority_lost("asymmetric:0.5:3>5", 10)
  assert majority_lost("none", 10) is None and majority_lost("human:worse", 10) is None
  fine, coarse = np.array([0, 1, 2, 3, 4]), np.array([0, 0, 0, 1, 1])  # superclasses of 3 and 2
  assert majority_lost("hierarchical:0.5", 5, labels=fine, coarse_labels=coarse) is not None
  assert majority_lost("hierarchical:0.45", 5, labels=fine, coarse_labels=coarse) is None
  assert majority_lost("hierarchical:0.9", 5) is None  # no superclasses: apply_noise refuses
  t = np.array([[0.5, 0.5], [0.9, 0.1]])
  assert "[0, 1]" in majority_lost(NoiseSpec("asymmetric", transition=t), 2)
  assert majority_lost(NoiseSpec("asymmetric", transition=np.eye(2)), 2) is None
