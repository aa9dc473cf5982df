"""Plots from cell records (matplotlib, PNG), named in a config's ``plots``.

* ``alpha_curve``: accuracy against α for SAP, per setting: clean test, noisy
  and clean validation (mean over seeds), the unchanged model as a dashed line
  and the α each seed picked on the noisy validation split.
* ``ntrust``: SAP's clean test accuracy against the trusted-set size.
* ``spectra``: each layer's normalised spectrum σ̃ᵢ of the trusted inputs.
* ``decision_boundary``: 2-D data (the two spirals): decision regions of the
  noisy model, SAP and Retrain, training points with their noisy labels and
  the flipped ones circled. Needs the corrected variables, saved by the runner
  for the method labels in ``Config.save_variables``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from experiments import config as cfg
from experiments import grid
from experiments.outputs import write_generated

__all__ = ["PLOTS", "draw"]


def _plt():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _std(values) -> np.ndarray:
  """Sample std over seeds (axis 0; ddof = 1, as in the tables; 0 for one seed)."""
  arr = np.asarray(values, np.float64)
  return arr.std(0, ddof=1) if len(arr) > 1 else np.zeros(arr.shape[1:])


def _setting(cell: grid.Cell) -> str:
  parts = [cell.field("setup"), cell.field("noise")]
  if cell.variant.label != "ERM":
    parts.append(cell.variant.label)
  return " ".join(parts)


def _sap_groups(cells, records, *, label: str | None = None):
  """{(setting, SAP row label): [records]} for SAP cells (one label if given)."""
  out: dict[tuple[str, str], list[dict]] = {}
  for cell in cells:
    rec = records.get(cell.key)
    if rec is None or cell.method.name != "sap":
      continue
    if label is not None and cell.method.display != label:
      continue
    out.setdefault((_setting(cell), cell.method.display), []).append(rec)
  return out


def _save(plt, fig, workdir, name: str) -> Path:
  """Lays out, writes ``workdir/name`` (PNG, 110 dpi) and closes the figure."""
  fig.tight_layout()
  path = Path(workdir) / name
  buf = io.BytesIO()
  fig.savefig(buf, dpi=110, format="png")
  plt.close(fig)
  write_generated(path, buf.getvalue())
  return path


def _grid_axes(plt, n: int, width: float = 4.2, height: float = 3.2):
  ncols = min(n, 4)
  nrows = int(np.ceil(n / ncols))
  fig, axes = plt.subplots(
    nrows, ncols, figsize=(max(width * ncols, 6.0), height * nrows + 0.6), squeeze=False
  )
  for ax in axes.flat[n:]:
    ax.axis("off")
  return fig, list(axes.flat[:n])


def alpha_curve(config, cells, records, workdir, checkpoint_dir) -> list[Path]:
  """accuracy vs α, one panel per setting (the first SAP row of the config)."""
  plt = _plt()
  sap_labels = [m.display for m in config.methods if m.name == "sap"]
  groups = {
    k: v
    for k, v in _sap_groups(cells, records, label=sap_labels[0]).items()
    if all("alpha_curve" in r for r in v)
  }
  if not groups:
    return []
  fig, axes = _grid_axes(plt, len(groups))
  for ax, ((setting, _), recs) in zip(axes, groups.items()):
    alphas = np.asarray(recs[0]["alpha_curve"]["alphas"])
    for key, name, color in (
      ("test", "clean test", "C0"),
      ("val_noisy", "noisy val", "C1"),
      ("val_clean", "clean val (oracle)", "C2"),
    ):
      curves = [r["alpha_curve"][key] for r in recs if r["alpha_curve"].get(key) is not None]
      if not curves:
        continue
      arr = 100 * np.asarray(curves, np.float64)
      mean, std = arr.mean(0), _std(arr)
      ax.plot(alphas, mean, "o-", color=color, label=name, ms=3)
      ax.fill_between(alphas, mean - std, mean + std, color=color, alpha=0.15)
      base = [r["alpha_curve"]["baseline"].get(key) for r in recs]
      base = [b for b in base if b is not None]
      if base:
        ax.axhline(100 * np.mean(base), color=color, ls="--", lw=1)
    for r in recs:
      if r.get("alpha"):
        ax.axvline(r["alpha"], color="0.5", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_title(setting, fontsize=10)
    ax.set_xlabel("α")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8, loc="lower left")
  fig.suptitle(
    "SAP: accuracy against α (mean ± std over seeds)\ndashed: unchanged model; "
    "dotted: α picked on the noisy validation split, per seed",
    fontsize=10,
  )
  return [_save(plt, fig, workdir, "alpha_curve.png")]


def ntrust(config, cells, records, workdir, checkpoint_dir) -> list[Path]:
  """Clean test accuracy of SAP against N_trust (the size actually used)."""
  plt = _plt()
  by_setting: dict[str, dict[int, list[float]]] = {}
  vanilla: dict[str, list[float]] = {}
  for cell in cells:
    rec = records.get(cell.key)
    if rec is None:
      continue
    setting = _setting(cell)
    vanilla.setdefault(setting, {}).update({rec["vanilla_key"]: rec["vanilla"]["test_accuracy"]})
    if cell.method.name != "sap" or set(cell.method.kwargs) - {"n_trusted"}:
      continue
    n = int(rec.get("trusted_size") or rec["chosen"].get("n_trusted"))
    by_setting.setdefault(setting, {}).setdefault(n, []).append(100 * rec["test_accuracy"])
  if not by_setting:
    return []
  fig, axes = _grid_axes(plt, len(by_setting))
  for ax, (setting, points) in zip(axes, by_setting.items()):
    ns = sorted(points)
    mean = np.array([np.mean(points[n]) for n in ns])
    std = np.array([_std(points[n]) for n in ns])
    ax.errorbar(ns, mean, yerr=std, fmt="o-", capsize=3, label="SAP")
    ax.axhline(
      100 * np.mean(list(vanilla[setting].values())), color="k", ls="--", lw=1, label="vanilla"
    )
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns], rotation=45)
    ax.set_title(setting, fontsize=10)
    ax.set_xlabel("N_trust (used)")
    ax.set_ylabel("clean test accuracy (%)")
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  return [_save(plt, fig, workdir, "ntrust.png")]


def spectra(config, cells, records, workdir, checkpoint_dir) -> list[Path]:
  """Normalised spectrum σ̃ᵢ per layer (first seed of each setting with spectra)."""
  plt = _plt()
  first: dict[str, dict] = {}
  for cell in cells:
    rec = records.get(cell.key)
    if rec is not None and "spectra" in rec:
      first.setdefault(_setting(cell), rec)
  if not first:
    return []
  fig, axes = _grid_axes(plt, len(first))
  for ax, (setting, rec) in zip(axes, first.items()):
    for layer, spectrum in rec["spectra"].items():
      s = np.asarray(spectrum)
      s = s[s > 0]
      ax.plot(np.arange(1, len(s) + 1), s, label=layer.split("/")[0], lw=1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(f"{setting} (seed {rec['seed']})", fontsize=10)
    ax.set_xlabel("direction i")
    ax.set_ylabel("σ̃ᵢ (share of activation energy)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle("Normalised spectra σ̃ᵢ of each layer's inputs on the trusted set", fontsize=10)
  return [_save(plt, fig, workdir, "spectra.png")]


def decision_boundary(config, cells, records, workdir, checkpoint_dir) -> list[Path]:
  """Decision regions of the noisy model, SAP and Retrain on 2-D data (one per seed)."""
  from sap_jax import checkpoint, train
  from sap_jax.spec import build_model, build_splits

  plt = _plt()
  written = []
  for vkey, group in grid.groups(list(cells)):
    if not all(c.key in records for c in group):
      continue
    spec = group[0].spec
    splits = build_splits(spec)
    if splits.x_train.shape[1:] != (2,):
      continue
    model = build_model(spec, splits.num_classes)
    apply_fn = train.eval_apply_fn(model)
    panels = []
    for cell in group:
      if cell.method.name == "vanilla":
        variables, _ = checkpoint.load_checkpoint(Path(checkpoint_dir) / vkey)
      else:
        path = Path(checkpoint_dir) / "corrected" / cell.key
        if not path.exists():
          continue
        variables, _ = checkpoint.load_checkpoint(path)
      panels.append((cell, records[cell.key], variables))
    if not panels:
      continue
    x = np.concatenate([splits.x_train, splits.x_test])
    lo, hi = x.min(0) - 0.3, x.max(0) + 0.3
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 300))
    mesh = np.stack([gx.ravel(), gy.ravel()], 1).astype(np.float32)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.3 * len(panels), 4.3), squeeze=False)
    flipped = splits.noise_mask
    for ax, (cell, rec, variables) in zip(axes[0], panels):
      logits = train.predict_logits(apply_fn, variables, mesh)
      pred = np.argmax(logits, -1).reshape(gx.shape)
      ax.contourf(gx, gy, pred, levels=[-0.5, 0.5, 1.5], colors=["#9ecae1", "#fdae6b"], alpha=0.6)
      ax.contour(gx, gy, pred, levels=[0.5], colors="k", linewidths=0.8)
      colors = np.where(splits.y_train == 0, "#08519c", "#a63603")
      ax.scatter(*splits.x_train[~flipped].T, c=colors[~flipped], s=6, lw=0)
      ax.scatter(
        *splits.x_train[flipped].T,
        c=colors[flipped],
        s=28,
        marker="X",
        edgecolors="k",
        linewidths=0.6,
      )
      title = cell.method.display
      if cell.method.name == "sap" and rec.get("alpha"):
        title += f" (α={rec['alpha']:g})"
      fit = rec["fit_noisy"]
      ax.set_title(
        f"{title}\nclean test {100 * rec['test_accuracy']:.1f}%, fits {100 * fit:.0f}% of flipped"
        if fit is not None
        else title,
        fontsize=10,
      )
      ax.set_xticks([])
      ax.set_yticks([])
    fig.suptitle(
      f"Two spirals, {grid.pretty_noise(spec.noise)} label noise (X: flipped "
      f"labels, drawn in their noisy class's colour), seed {spec.seed}",
      fontsize=10,
    )
    written.append(_save(plt, fig, workdir, f"decision_boundary_s{spec.seed}.png"))
  return written


PLOTS: dict[str, Callable[..., list[Path]]] = {
  "alpha_curve": alpha_curve,
  "ntrust": ntrust,
  "spectra": spectra,
  "decision_boundary": decision_boundary,
}


def draw(
  name: str,
  config: cfg.Config,
  cells: Sequence[grid.Cell],
  records: Mapping[str, dict],
  workdir: Path,
  checkpoint_dir: Path,
) -> list[Path]:
  """Draws the plot ``name`` into ``workdir``; returns the files written."""
  if name not in PLOTS:
    raise ValueError(f"Unknown plot {name!r}; known: {', '.join(PLOTS)}.")
  return PLOTS[name](config, cells, records, Path(workdir), Path(checkpoint_dir))
