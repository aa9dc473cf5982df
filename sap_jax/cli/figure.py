"""The PNG that `sap-jax correct` writes beside its report: the α curves and the spectra.

Two panels, drawn from the report and the decomposition's spectra (`report_figure`):

* the α curves: the corrected model's accuracy on the noisy validation split against α
  (log axis), and on the clean validation split where the report has it; the original
  model's accuracies as dashed horizontal lines; the chosen α marked (a star on the
  noisy curve and a dotted vertical line);
* each layer's normalised spectrum σ̃ᵢ = σᵢ² / Σⱼ σⱼ² of its inputs on the trusted set,
  largest first, against the direction i (log σ̃; a grouped layer shows the mean over
  its groups), one line per layer named as the report names it. With one α for every
  layer, a dashed line at σ̃ = 1 / (α + 1) marks where λ = ½: directions above it are
  kept, those below damped.

The figure is a `matplotlib.figure.Figure` on the Agg canvas (no pyplot state), imported
only when a figure is drawn, so the command line starts without matplotlib. `write_figure`
saves it under the overwrite rule (`sap_jax.safe_write`), atomically, and `save_figure`
(the command's call) does so after a one-line warning instead when matplotlib cannot be
imported; the PNG carries a text chunk ``sap_jax: sap_jax.figure`` (`FIGURE_FORMAT`), which is how `FIGURE` recognises
one this tool wrote and `--overwrite` may replace.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sap_jax import safe_write
from sap_jax.layers import path_name

if TYPE_CHECKING:
  from matplotlib.figure import Figure

  from sap_jax.decomposition import Decomposition

__all__ = [
  "FIGURE",
  "FIGURE_FORMAT",
  "FIGURE_KEY",
  "DPI",
  "SIZE_INCHES",
  "figure_path",
  "is_figure",
  "layer_spectra",
  "png_text",
  "report_figure",
  "save_figure",
  "write_figure",
]

FIGURE_KEY = "sap_jax"
FIGURE_FORMAT = "sap_jax.figure"
"""The PNG text chunk ``FIGURE_KEY: FIGURE_FORMAT`` that marks a figure of this tool."""

SIZE_INCHES = (12.0, 4.5)
DPI = 100
"""The PNG's size: SIZE_INCHES · DPI pixels (1200 × 450)."""

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEAD_BYTES = 1 << 16  # text chunks sit before the image data, in the first few KiB


def figure_path(report_path: str | os.PathLike) -> Path:
  """Where the figure of the report ``report_path`` goes: beside it, ``<stem>.png``."""
  return Path(report_path).with_suffix(".png")


# ------------------------------------------------------------------ recognising one


def png_text(path: str | os.PathLike) -> dict[str, str]:
  """The ``tEXt`` chunks before the image data of the PNG file ``path``, keyword → text;
  empty when ``path`` is not a PNG file (reads at most its first 64 KiB)."""
  try:
    with open(path, "rb") as f:
      head = f.read(_PNG_HEAD_BYTES)
  except OSError:
    return {}
  if not head.startswith(_PNG_SIGNATURE):
    return {}
  out, at = {}, len(_PNG_SIGNATURE)
  while at + 8 <= len(head):
    length, kind = struct.unpack(">I4s", head[at : at + 8])
    data = head[at + 8 : at + 8 + length]
    if kind in (b"IDAT", b"IEND") or len(data) < length:
      break
    if kind == b"tEXt":
      key, _, text = data.partition(b"\0")
      out[key.decode("latin-1")] = text.decode("latin-1")
    at += 12 + length  # length, type, data, CRC
  return out


def is_figure(path: str | os.PathLike) -> bool:
  """Whether ``path`` is a PNG written by `write_figure` (its text chunk)."""
  return png_text(path).get(FIGURE_KEY) == FIGURE_FORMAT


FIGURE = safe_write.Kind("sap_jax figure", is_figure)
"""What `write_figure` writes, for `sap_jax.safe_write.check_targets`."""


# ------------------------------------------------------------------ the data


def layer_spectra(decomposition: Decomposition) -> dict[str, np.ndarray]:
  """Each eigh layer's normalised spectrum σ̃, largest first, on the host: "/"-joined layer
  name → (k,) float64; a grouped layer's (G, k) spectra are sorted per group, then averaged.
  A solve layer has no spectrum and is left out."""
  out = {}
  for path, spectrum in decomposition.spectra.items():
    s = np.asarray(spectrum, np.float64)
    s = -np.sort(-s.reshape(-1, s.shape[-1]), axis=-1)
    out[path_name(path)] = s.mean(0)
  return out


def _curve(per_alpha: Mapping[Any, float] | None) -> tuple[np.ndarray, np.ndarray]:
  """``{α: accuracy}`` (keys numbers, or strings as a loaded report has them) as the
  α values and accuracies, in the report's order."""
  items = list((per_alpha or {}).items())
  alphas = np.array([float(a) for a, _ in items], np.float64)
  accuracies = np.array([np.nan if v is None else float(v) for _, v in items], np.float64)
  return alphas, accuracies


# ------------------------------------------------------------------ the figure


def report_figure(report: Mapping[str, Any], spectra: Mapping[str, Any]) -> Figure:
  """The figure of a `correct` report: the α curves and each layer's spectrum.

  Args:
    report: a `correct` report (``sweep_noisy_val``, ``sweep_clean_val`` (may be None),
      ``chosen_alpha``, optionally ``tuning`` and ``input``).
    spectra: layer name → normalised spectrum σ̃ (`layer_spectra`); a spectrum is drawn
      largest first, its zero entries left out (a log axis has no place for them).

  Returns:
    A `matplotlib.figure.Figure` (Agg canvas, SIZE_INCHES at DPI) with two axes:
    ``axes[0]`` the α curves (lines labelled "noisy val", "clean val", "original, noisy
    val", "original, clean val", and the chosen α's marker "chosen α = …"), ``axes[1]``
    the spectra (one line per layer, labelled with its name).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  from matplotlib.ticker import PercentFormatter

  fig = Figure(figsize=SIZE_INCHES, dpi=DPI, layout="constrained")
  FigureCanvasAgg(fig)
  curves, spectrum_axes = fig.subplots(1, 2, width_ratios=(1.0, 1.25))
  _draw_alpha_curves(curves, report, PercentFormatter(xmax=1.0))
  _draw_spectra(spectrum_axes, report, spectra)
  name = Path(str(report.get("input", ""))).name
  fig.suptitle(f"SAP correction of {name}" if name else "SAP correction", fontsize=11)
  return fig


def _draw_alpha_curves(ax, report: Mapping[str, Any], percent) -> None:
  noisy = report["sweep_noisy_val"]
  clean = report.get("sweep_clean_val") or {}
  chosen = report.get("chosen_alpha")
  alphas, accuracies = _curve(noisy["per_alpha"])
  (line,) = ax.plot(alphas, accuracies, "o-", label="noisy val")
  ax.axhline(noisy["baseline"], color=line.get_color(), ls="--", label="original, noisy val")
  clean_alphas, clean_accuracies = _curve(clean.get("per_alpha"))
  if len(clean_alphas):
    (clean_line,) = ax.plot(clean_alphas, clean_accuracies, "s-", label="clean val")
    if clean.get("baseline") is not None:
      ax.axhline(
        clean["baseline"], color=clean_line.get_color(), ls="--", label="original, clean val"
      )
  if chosen is not None:
    at = np.flatnonzero(alphas == float(chosen))
    y = accuracies[at[0]] if len(at) else np.nan
    ax.plot([chosen], [y], "*", color="black", ms=14, label=f"chosen α = {chosen:g}")
    ax.axvline(chosen, color="black", ls=":", lw=1, label="_chosen α")  # not in the legend
    title = f"α chosen on the noisy validation split: {chosen:g}"
  else:
    title = "no α beat the original model (kept)"
  ax.set_xscale("log")
  ax.yaxis.set_major_formatter(percent)
  ax.set_xlabel("α")
  ax.set_ylabel("accuracy of the corrected model")
  ax.set_title(title, fontsize=10)
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")


def _draw_spectra(ax, report: Mapping[str, Any], spectra: Mapping[str, Any]) -> None:
  from matplotlib import colormaps

  chosen = report.get("chosen_alpha")
  colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(len(spectra), 1)))
  for colour, (name, spectrum) in zip(colours, spectra.items()):
    s = np.sort(np.asarray(spectrum, np.float64).ravel())[::-1]
    s = s[s > 0]
    ax.plot(np.arange(1, len(s) + 1), s, color=colour, lw=1.2, label=name)
  ax.set_xlabel("direction i")
  ax.set_ylabel("σ̃ᵢ (share of the input energy)")
  ax.set_title("each layer's normalised spectrum on the trusted set", fontsize=10)
  if not spectra:
    ax.text(0.5, 0.5, "no spectrum: no layer was decomposed by eigh", ha="center", va="center")
    return
  if chosen is not None and report.get("tuning") is None:
    ax.axhline(1.0 / (chosen + 1.0), color="black", ls="--", lw=1, label=f"λ = ½ at α = {chosen:g}")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend(
    fontsize="x-small",
    loc="upper left",
    bbox_to_anchor=(1.01, 1.0),
    ncols=1 + len(spectra) // 24,
  )


# ------------------------------------------------------------------ writing it


def write_figure(
  path: str | os.PathLike,
  report: Mapping[str, Any],
  spectra: Mapping[str, Any],
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path:
  """`report_figure` as a PNG at ``path``, under the overwrite rule, atomically (marked as
  a `FIGURE` by its text chunk).

  Returns:
    ``path`` made absolute.

  Raises:
    ImportError: matplotlib cannot be imported (nothing is written).
    RefusedWrite: the rule refuses ``path`` (nothing is written).
  """
  safe_write.check_target(path, FIGURE, overwrite=overwrite, protect=protect)  # before drawing
  fig = report_figure(report, spectra)
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=DPI, metadata={FIGURE_KEY: FIGURE_FORMAT})
  return safe_write.write_file(
    path, buffer.getvalue(), FIGURE, overwrite=overwrite, protect=protect
  )


def save_figure(
  path: str | os.PathLike,
  report: Mapping[str, Any],
  decomposition: Decomposition,
  *,
  overwrite: bool = False,
  protect: Iterable[str | os.PathLike] = (),
) -> Path | None:
  """`write_figure` of a `correct` report and its decomposition's `layer_spectra`; when
  matplotlib cannot be imported, one warning and nothing written.

  Returns:
    ``path`` made absolute, or None when no figure was written.
  """
  try:
    import matplotlib  # noqa: F401
  except ImportError as e:
    warnings.warn(
      f"no figure written at {path}: matplotlib cannot be imported ({e}); install it "
      "(pip install matplotlib) or pass --no-figure.",
      stacklevel=2,
    )
    return None
  spectra = layer_spectra(decomposition)
  return write_figure(path, report, spectra, overwrite=overwrite, protect=protect)
