"""sap_jax.spectrum: the per-layer effective rank and top energy of the statistics."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax.spectrum import stats_summary
from sap_jax.stats import CONV, DENSE, LayerStats, Layout


def _entropy(p):
  return -sum(q * math.log(q) for q in p if q > 0)


def _dense_stats(eigenvalues, rotate=False, count=12.0):
  gram = np.diag(np.asarray(eigenvalues, np.float64))
  if rotate:  # the same spectrum in another basis
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=gram.shape))
    gram = q @ gram @ q.T
  d = len(eigenvalues)
  return LayerStats(
    gram=jnp.asarray(gram, jnp.float32),
    count=jnp.float32(count),
    layout=Layout(DENSE, (d, 7), 1),
  )


def test_summary_of_a_diagonal_gram_is_the_closed_form():
  stats = {("block", "Dense_0"): _dense_stats([4.0, 3.0, 2.0, 1.0])}
  out = stats_summary(stats)
  assert list(out) == ["block/Dense_0"]
  s = out["block/Dense_0"]
  assert set(s) == {"kind", "dim", "groups", "rows", "effective_rank", "top_energy"}
  assert (s["kind"], s["dim"], s["groups"], s["rows"]) == ("dense", 4, 1, 12)
  assert type(s["rows"]) is int
  p = [0.4, 0.3, 0.2, 0.1]  # the eigenvalues over their sum
  assert s["effective_rank"] == pytest.approx(math.exp(_entropy(p)), rel=1e-6)
  assert s["top_energy"] == pytest.approx(0.4, rel=1e-6)
  # The spectrum does not depend on the basis.
  rotated = stats_summary({("l",): _dense_stats([4.0, 3.0, 2.0, 1.0], rotate=True)})["l"]
  assert rotated["effective_rank"] == pytest.approx(s["effective_rank"], rel=1e-5)
  assert rotated["top_energy"] == pytest.approx(0.4, rel=1e-5)
  # Identities: a flat spectrum has effective rank d, one direction has rank 1.
  flat = stats_summary({("l",): _dense_stats([2.0, 2.0, 2.0])})["l"]
  assert flat["effective_rank"] == pytest.approx(3.0, rel=1e-6)
  assert flat["top_energy"] == pytest.approx(1 / 3, rel=1e-6)
  one = stats_summary({("l",): _dense_stats([5.0, 0.0, 0.0])})["l"]
  assert one["effective_rank"] == pytest.approx(1.0) and one["top_energy"] == pytest.approx(1.0)


def test_grouped_conv_summary_averages_over_groups():
  gram = np.stack([np.diag([1.0, 1.0]), np.diag([3.0, 0.0])])  # (G, d, d), G = 2, d = 2
  layout = Layout(CONV, (1, 1, 2, 4), 3, groups=2)
  stats = {("Conv_0",): LayerStats(gram=jnp.asarray(gram), count=jnp.float32(30.0), layout=layout)}
  s = stats_summary(stats)["Conv_0"]
  assert (s["kind"], s["dim"], s["groups"], s["rows"]) == ("conv", 2, 2, 30)
  assert s["effective_rank"] == pytest.approx((2.0 + 1.0) / 2, rel=1e-6)
  assert s["top_energy"] == pytest.approx((0.5 + 1.0) / 2, rel=1e-6)


def test_given_spectra_are_used_instead_of_the_gram():
  stats = {("a",): _dense_stats([4.0, 3.0, 2.0, 1.0]), ("b",): _dense_stats([1.0, 1.0, 1.0, 1.0])}
  spectra = {("a",): np.array([0.5, 0.25, 0.25, 0.0])}
  out = stats_summary(stats, spectra)
  # "a" from the given spectrum: H = ½ ln 2 + ½ ln 4 = 1.5 ln 2.
  assert out["a"]["effective_rank"] == pytest.approx(2.0**1.5, rel=1e-9)
  assert out["a"]["top_energy"] == 0.5
  # "b" is not in the spectra: computed from its Gram, as without spectra.
  assert out["b"] == stats_summary({("b",): stats[("b",)]})["b"]
  assert out["b"]["effective_rank"] == pytest.approx(4.0, rel=1e-6)
  # With the spectrum the Gram itself gives, both routes agree.
  computed = stats_summary(stats)["a"]
  given = stats_summary(stats, {("a",): np.array([0.4, 0.3, 0.2, 0.1])})["a"]
  assert given["effective_rank"] == pytest.approx(computed["effective_rank"], rel=1e-6)
  assert given["top_energy"] == pytest.approx(computed["top_energy"], rel=1e-6)
