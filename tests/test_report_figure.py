"""The PNG beside a `correct` report: its α curves and spectra, its file, its overwrite rule."""

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sap_jax import safe_write
from sap_jax.cli import figure
from sap_jax.projection import eigh_basis, svd_basis
from sap_jax.sweep import Decomposition

SIGMA = np.array([4.0, 2.0, 1.0, 0.5])  # known singular values of a layer's inputs
SPECTRUM = SIGMA**2 / np.sum(SIGMA**2)  # σ̃ = σ² / Σσ²


def _report(chosen=100.0, clean=True, tuning=None):
  return {
    "input": "/runs/ckpt",
    "chosen_alpha": chosen,
    "sweep_noisy_val": {"baseline": 0.5, "per_alpha": {10.0: 0.55, 100.0: 0.625, 1000.0: 0.4}},
    "sweep_clean_val": {"baseline": 0.52, "per_alpha": {10.0: 0.6, 100.0: 0.7, 1000.0: 0.45}}
    if clean
    else None,
    "tuning": tuning,
  }


def _lines(ax):
  return {line.get_label(): line for line in ax.get_lines()}


def _spectra():
  return {"first": SPECTRUM, "block/conv": np.array([0.5, 0.0, 0.25, 0.25])}


def test_the_alpha_curves_are_the_reports_sweep():
  fig = figure.report_figure(_report(), _spectra())
  curves, spectra = fig.axes
  assert curves.get_xscale() == "log" and spectra.get_yscale() == "log"
  lines = _lines(curves)
  assert set(lines) == {
    "noisy val",
    "original, noisy val",
    "clean val",
    "original, clean val",
    "chosen α = 100",
    "_chosen α",  # the vertical line, not in the legend
  }
  assert list(lines["noisy val"].get_xdata()) == [10.0, 100.0, 1000.0]
  assert list(lines["noisy val"].get_ydata()) == [0.55, 0.625, 0.4]
  assert list(lines["clean val"].get_xdata()) == [10.0, 100.0, 1000.0]
  assert list(lines["clean val"].get_ydata()) == [0.6, 0.7, 0.45]
  assert list(lines["original, noisy val"].get_ydata()) == [0.5, 0.5]  # horizontal
  assert list(lines["original, clean val"].get_ydata()) == [0.52, 0.52]
  chosen = lines["chosen α = 100"]  # the star on the noisy curve at the chosen α
  assert list(chosen.get_xdata()) == [100.0] and list(chosen.get_ydata()) == [0.625]
  assert list(lines["_chosen α"].get_xdata()) == [100.0, 100.0]
  assert "100" in curves.get_title()
  assert fig.get_suptitle() == "SAP correction of ckpt"


def test_a_loaded_report_draws_the_same_curves():
  loaded = json.loads(json.dumps(_report()))  # α keys are strings in the file
  lines = _lines(figure.report_figure(loaded, _spectra()).axes[0])
  assert list(lines["noisy val"].get_xdata()) == [10.0, 100.0, 1000.0]
  assert list(lines["clean val"].get_ydata()) == [0.6, 0.7, 0.45]


def test_a_kept_model_without_clean_labels_marks_no_alpha():
  fig = figure.report_figure(_report(chosen=None, clean=False), _spectra())
  curves, spectra = fig.axes
  assert set(_lines(curves)) == {"noisy val", "original, noisy val"}
  assert "kept" in curves.get_title()
  assert not [name for name in _lines(spectra) if name.startswith("λ")]


def test_each_layer_spectrum_is_its_normalised_spectrum_largest_first():
  fig = figure.report_figure(_report(), _spectra())
  lines = _lines(fig.axes[1])
  assert list(lines["first"].get_xdata()) == [1, 2, 3, 4]
  np.testing.assert_array_equal(lines["first"].get_ydata(), SPECTRUM)
  # sorted, its zero left out (a log axis has no place for it)
  assert list(lines["block/conv"].get_ydata()) == [0.5, 0.25, 0.25]
  # where λ = α σ̃ / ((α − 1) σ̃ + 1) is ½ at the chosen α
  assert list(lines["λ = ½ at α = 100"].get_ydata()) == [1 / 101, 1 / 101]
  tuned = figure.report_figure(_report(tuning={"alpha": {"first": 3.0}}), _spectra())
  assert set(_lines(tuned.axes[1])) == {"first", "block/conv"}  # one α per layer: no line


def test_layer_spectra_come_from_the_decomposition_by_layer_name():
  rng = np.random.default_rng(0)
  u, _ = np.linalg.qr(rng.normal(size=(32, 4)))
  v, _ = np.linalg.qr(rng.normal(size=(4, 4)))
  rows = jnp.asarray(u * SIGMA @ v.T, jnp.float32)  # singular values SIGMA
  grouped = eigh_basis(
    jnp.stack([jnp.diag(jnp.array([1.0, 3.0])), jnp.diag(jnp.array([2.0, 2.0]))])
  )
  decomposition = Decomposition(
    bases={("Dense_0", "kernel"): svd_basis(rows), ("conv",): grouped},
    kernels={},
    rotated={},
    layouts=(),
  )
  spectra = figure.layer_spectra(decomposition)
  assert list(spectra) == ["Dense_0/kernel", "conv"]
  np.testing.assert_allclose(spectra["Dense_0/kernel"], SPECTRUM, rtol=1e-5)
  # each group sorted largest first, then the mean over groups: [(¾ + ½) / 2, (¼ + ½) / 2]
  np.testing.assert_allclose(spectra["conv"], [0.625, 0.375], rtol=1e-6)
  line = _lines(figure.report_figure(_report(), spectra).axes[1])["Dense_0/kernel"]
  np.testing.assert_array_equal(line.get_ydata(), spectra["Dense_0/kernel"])


def test_no_spectrum_says_so():
  fig = figure.report_figure(_report(), {})
  assert not _lines(fig.axes[1])
  assert any("no spectrum" in t.get_text() for t in fig.axes[1].texts)


def test_the_png_is_written_beside_the_report_and_recognised(tmp_path):
  assert figure.figure_path(tmp_path / "sap_report.json") == tmp_path / "sap_report.png"
  path = figure.write_figure(tmp_path / "sap_report.png", _report(), _spectra())
  with Image.open(path) as image:
    assert image.format == "PNG"
    assert image.size == (figure.SIZE_INCHES[0] * figure.DPI, figure.SIZE_INCHES[1] * figure.DPI)
  assert figure.png_text(path)[figure.FIGURE_KEY] == figure.FIGURE_FORMAT
  assert figure.is_figure(path)
  assert not [p for p in tmp_path.iterdir() if safe_write.TMP_TAG in p.name]


def test_only_a_figure_of_this_tool_is_replaced(tmp_path):
  foreign = tmp_path / "plot.png"
  Image.new("RGB", (4, 4)).save(foreign)  # a PNG, not ours
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  for path in (foreign, text):
    before = path.read_bytes()
    assert not figure.is_figure(path)
    with pytest.raises(safe_write.RefusedWrite, match="not a sap_jax figure"):
      figure.write_figure(path, _report(), _spectra(), overwrite=True)
    with pytest.raises(safe_write.RefusedWrite, match="--overwrite"):
      figure.write_figure(path, _report(), _spectra())
    assert path.read_bytes() == before
  ours = figure.write_figure(tmp_path / "ours.png", _report(), _spectra())
  with pytest.raises(safe_write.RefusedWrite, match="already exists \\(a sap_jax figure\\)"):
    figure.write_figure(ours, _report(), _spectra())
  before = ours.read_bytes()
  figure.write_figure(ours, _report(chosen=None), _spectra(), overwrite=True)
  assert figure.is_figure(ours) and ours.read_bytes() != before


def test_without_matplotlib_one_warning_and_no_file(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails
  decomposition = Decomposition(bases={}, kernels={}, rotated={}, layouts=())
  path = tmp_path / "sap_report.png"
  with pytest.warns(UserWarning, match="matplotlib cannot be imported.*--no-figure"):
    assert figure.save_figure(path, _report(), decomposition) is None
  assert not list(tmp_path.iterdir())


def test_the_commands_import_no_matplotlib():
  code = (
    "import sys, sap_jax.cli.commands; print(sorted(m for m in sys.modules if 'matplotlib' in m))"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == "[]"
