"""A training run's initial variables from pretrained weights (``train_model(init_from=)``).

``init_from`` is a path (`sap_jax.pretrained.load_named_arrays`: ``.npz`` /
``.safetensors`` of named arrays, a sap_jax checkpoint, an orbax directory) or a tree
already in memory (a flat ``{name: array}`` or nested ``{"params": …}``). Arrays in the
package's names (``"params/stem_conv/kernel"``) are used as they are; a torchvision state
dict (``"conv1.weight"``, ``"class_token"``, …) is converted first
(`sap_jax.convert.torchvision`: ResNet18/34/50, and the ViT when the model says its
``num_heads``). `sap_jax.pretrained.merge_pretrained` then fills the freshly initialised
variables by name; the classifier ``head`` is re-initialised when its shape differs (a new
number of classes), and any other shape mismatch is refused naming the parameter and both
shapes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sap_jax.pretrained import PretrainedReport, load_named_arrays, merge_pretrained

__all__ = ["REINIT", "describe", "initial_variables", "pretrained_arrays", "record"]

REINIT = ("head",)
"""The layers re-initialised when their pretrained shape differs (the classifier)."""


def _is_torchvision(flat: Mapping[str, Any]) -> bool:
  """Names without "/" and with torch's "." separators (a torch ``state_dict``)."""
  names = list(flat)
  return bool(names) and all("/" not in n for n in names) and any("." in n for n in names)


def pretrained_arrays(init_from: Any, model: Any = None) -> Mapping[str, Any]:
  """The pretrained arrays of ``init_from`` in the package's names.

  Args:
    init_from: a path (str or os.PathLike) or a tree (flat names or nested).
    model: the model being initialised: its ``num_heads`` converts a torchvision ViT.

  Returns:
    A flat ``{name: array}`` or a nested variables tree, for
    `sap_jax.pretrained.merge_pretrained`.

  Raises:
    FileNotFoundError, ValueError: a missing or unreadable file, or a torchvision state
      dict that is neither a ResNet nor (with a model that has ``num_heads``) a ViT.
  """
  from sap_jax.convert import torchvision

  if isinstance(init_from, (str, os.PathLike)):
    arrays = load_named_arrays(init_from)
  elif isinstance(init_from, Mapping):
    arrays = init_from
  else:
    raise TypeError(
      f"init_from must be a path or a tree of named arrays, got {type(init_from).__name__}; "
      "pass e.g. 'resnet50.npz' or {'params': ...}."
    )
  if not (isinstance(arrays, Mapping) and _is_torchvision(arrays)):
    return arrays
  if "class_token" in arrays:
    num_heads = getattr(model, "num_heads", None)
    if num_heads is None:
      raise ValueError(
        "init_from holds a torchvision ViT state dict but the model does not say its "
        "num_heads; convert it first (sap_jax.convert.torchvision.vit_variables(sd, "
        "num_heads=...)) and save the result as .npz."
      )
    return torchvision.vit_variables(arrays, num_heads=int(num_heads))
  return torchvision.resnet_variables(arrays)


def initial_variables(
  init_variables: Any, init_from: Any, model: Any = None
) -> tuple[Any, PretrainedReport]:
  """``init_variables`` filled from ``init_from`` (`pretrained_arrays`), and the report.

  Raises:
    ValueError: a variable outside `REINIT` whose pretrained shape differs (named with both
      shapes), or nothing in common; before any training.
  """
  return merge_pretrained(init_variables, pretrained_arrays(init_from, model), reinit=REINIT)


def record(report: PretrainedReport, init_from: Any) -> dict[str, Any]:
  """The report as JSON for a checkpoint's metadata: the source and the names."""
  source = os.fspath(init_from) if isinstance(init_from, (str, os.PathLike)) else "<tree>"
  return {"source": source, **{k: list(v) for k, v in report._asdict().items()}}


def describe(report: PretrainedReport, init_from: Any, limit: int = 6) -> str:
  """One line per part of the report (counts, and names up to ``limit`` each)."""
  source = os.fspath(init_from) if isinstance(init_from, (str, os.PathLike)) else "a tree"
  lines = [f"initialised from {source}:"]
  for part, names in report._asdict().items():
    shown = ", ".join(names[:limit]) + (", …" if len(names) > limit else "")
    lines.append(f"  {part}: {len(names)}" + (f" ({shown})" if names else ""))
  return "\n".join(lines)
