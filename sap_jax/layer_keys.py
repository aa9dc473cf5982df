"""Layer names as a user gives them: the keys of a per-layer α and the layers of a
decomposition against the variables it is applied to.

A layer is a path tuple (``("block1", "conv")``) inside the library and a "/"-joined name
(``"block1/conv"``, `sap_jax.layers.path_name`) wherever it is printed: ``result.layers``,
the CLI's reports, the error messages. Both are accepted as keys of a per-layer α and of
``calls`` (which call of a layer called more than once counts; `layer_keyed`); a key that
names no layer is refused with the list of names, never ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sap_jax.layers import path_name
from sap_jax.types import Path


def layer_keyed(
  mapping: Mapping[Any, Any], paths: Iterable[Path], what: str, it: str = "it"
) -> dict[Path, Any]:
  """A mapping keyed by layer names or path tuples, re-keyed by the paths it names.

  The one reading of per-layer keys (a per-layer α, `run_sap`'s ``calls``): a key is a
  path tuple or the "/"-joined name ``result.layers`` prints.

  Args:
    mapping: the user's mapping (values are not looked at: they may be tracers).
    paths: the model's layers, in order.
    what: the option's name, as messages print it ("per-layer alpha").
    it: what the fix keys by these names ("α").

  Returns:
    ``{path: value}`` for the keys of ``mapping``, in their order.

  Raises:
    ValueError: a key that is neither a tuple nor a string, a key that names no layer
      (the message lists the layer names), or a layer given twice (by path and by name).
  """
  paths = list(paths)
  by_name = {path_name(p): p for p in paths}
  known = set(paths)
  names = list(by_name)
  out: dict[Path, Any] = {}
  unknown = []
  for key, value in mapping.items():
    if isinstance(key, str):
      path = by_name.get(key)
    elif isinstance(key, tuple):
      path = key if key in known else None
    else:
      example = repr(names[0]) if names else "'head'"
      raise ValueError(
        f"{what} keys are layer names such as {example} or path tuples, got "
        f"{key!r} ({type(key).__name__})."
      )
    if path is None:
      unknown.append(key if isinstance(key, str) else path_name(key))
    elif path in out:
      raise ValueError(
        f"{what} gives layer {path_name(path)!r} twice (by name and by path); keep one key."
      )
    else:
      out[path] = value
  if unknown:
    raise ValueError(
      f"{what} names no layer {unknown}; the layers are {names}. Key {it} by these "
      "names (or their path tuples)."
    )
  return out


def per_layer_alpha(alpha: Any, paths: Iterable[Path]) -> Any:
  """A per-layer α keyed by layer paths: ``alpha`` itself when it is not a mapping.

  Args:
    alpha: a scalar α (returned as it is), or a mapping whose keys are path tuples or
      the "/"-joined names ``result.layers`` prints (values are not looked at: they may
      be tracers).
    paths: the layers to correct, in order.

  Returns:
    ``{path: α}`` over ``paths``, in their order.

  Raises:
    ValueError: a key that is neither a tuple nor a string, a key that names no layer
      (the message lists the layer names), or a layer given twice (by path and by name).
    KeyError: a layer of ``paths`` without an α.
  """
  if not isinstance(alpha, Mapping):
    return alpha
  paths = list(paths)
  out = layer_keyed(alpha, paths, "per-layer alpha", "α")
  names = [path_name(p) for p in paths]
  missing = [path_name(p) for p in paths if p not in out]
  if missing:
    raise KeyError(
      f"per-layer alpha has no entry for layers {missing}; give every layer of {names} "
      "an α, or a scalar."
    )
  return {p: out[p] for p in paths}


def check_same_model(variables: Mapping[str, Any], kernels: Mapping[Path, Any]) -> None:
  """Refuses variables that are not those of the model a decomposition was made from.

  Args:
    variables: the variables about to be corrected (with a ``params`` collection).
    kernels: path → the kernel each decomposed layer had (`Decomposition.kernels`).

  Raises:
    ValueError: a decomposed layer missing from ``variables['params']`` or whose kernel
      has another shape, naming the layer and the fix.
  """
  params = variables.get("params") if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    return  # `with_kernels` gives its own message for variables without params
  for path, want in kernels.items():
    node: Any = params
    for name in path:
      node = node.get(name) if isinstance(node, Mapping) else None
    kernel = node.get("kernel") if isinstance(node, Mapping) else None
    if kernel is None:
      raise ValueError(
        f"the decomposition is of another model: its layer {path_name(path)!r} has no "
        "kernel in these variables. Pass the variables decompose() was given (or "
        "decompose these ones)."
      )
    have, had = getattr(kernel, "shape", None), getattr(want, "shape", None)
    if have is not None and had is not None and tuple(have) != tuple(had):
      raise ValueError(
        f"the decomposition is of another model: layer {path_name(path)!r} has a "
        f"{tuple(had)} kernel there and {tuple(have)} here. Pass the "
        "variables decompose() was given (or decompose these ones)."
      )
