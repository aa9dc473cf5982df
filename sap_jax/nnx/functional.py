"""An NNX model as the SAP core's ``(apply_fn, variables)`` pair, and back.

`functional(model)` splits a model (`nnx.split`) into a static part and plain nested
dicts of arrays (`nnx.to_pure_dict`): ``variables = {"params": …, "rest": …}``, where
``params`` holds every `nnx.Param` under its graph path (``variables["params"]["layers"][0]
["kernel"]``) and ``rest`` every other variable (batch statistics, RNG state). The
``apply_fn`` merges them back into a model (`nnx.merge`) and calls it. It runs the
library's own *eval-mode* copy of the model (``model.eval()`` on a copy: dropout off,
BatchNorm on its running averages); the user's model is never touched.

`NNXApply` is a frozen dataclass of the model's static structure, so it is hashable
and equal for equal models: the core's module-level jitted programs compile once per
model and are reused by every later call (as for Linen's `sap_jax.hashable.EvalApply`).

`to_model(model, variables)` merges (corrected) variables into a fresh model with the
user's model's structure and mode: a copy, sharing every unchanged array.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
from flax import nnx

from sap_jax.forward_checks import EVAL_MODE_FIX, TrainModeForward
from sap_jax.layers import key_path_name
from sap_jax.nnx.layers import intercepting
from sap_jax.stats.observe import observing
from sap_jax.types import Variables


def pure_state(state: nnx.State) -> tuple[dict[str, Any], Any]:
  """``(pure nested dict, treedef of the State)``; their leaves are in the same order
  (`from_pure` turns such a dict back into the State)."""
  pure = nnx.to_pure_dict(state)
  leaves, treedef = jax.tree_util.tree_flatten(state)
  if any(a is not b for a, b in zip(leaves, jax.tree_util.tree_leaves(pure))):
    raise ValueError(  # guards the leaf-order assumption `from_pure` relies on
      "Internal error: the NNX state and its pure dict flatten in different orders."
    )
  return pure, treedef


def from_pure(treedef: Any, pure: Any) -> nnx.State:
  """The State of ``treedef`` (from `pure_state`) holding the leaves of ``pure``."""
  return jax.tree_util.tree_unflatten(treedef, jax.tree_util.tree_leaves(pure))


@dataclasses.dataclass(frozen=True)
class NNXApply:
  """``apply_fn(variables, x) = merged_model(x)``: an NNX model's forward for the core.

  Attributes:
    graphdef: the static structure (of the eval-mode copy, for the library's forward).
    params_def: treedef of the model's `nnx.Param` state.
    rest_def: treedef of every other variable.
  """

  graphdef: Any
  params_def: Any
  rest_def: Any

  def merge(self, variables: Variables) -> nnx.Module:
    """The model with ``variables`` (a fresh object)."""
    return nnx.merge(
      self.graphdef,
      from_pure(self.params_def, variables["params"]),
      from_pure(self.rest_def, variables["rest"]),
    )

  def __call__(self, variables: Variables, x: Any) -> Any:
    model = self.merge(variables)
    if not observing():
      out = model(x)
    else:
      with intercepting(model):
        out = model(x)
    _check_state_kept(model, variables)
    return out


def _check_state_kept(model: nnx.Module, variables: Variables) -> None:
  """Refuses a call that changed the model's non-parameter state (BatchNorm statistics
  updated, RNG counts drawn: a train-mode call even after ``.eval()``, e.g. a ``__call__``
  passing ``use_running_average=False`` or ``deterministic=False`` itself). Checked by
  identity of the arrays, at trace time; a call in eval mode leaves every one in place."""
  _, _, rest = nnx.split(model, nnx.Param, ...)
  before = jax.tree_util.tree_leaves(variables["rest"])
  after_flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(rest))[0]
  changed = [
    key_path_name(path)
    for (path, new), old in zip(after_flat, before, strict=False)
    if new is not old
  ]
  if changed:
    raise TrainModeForward(
      f"the NNX model is a train-mode forward: its call changed its own state {changed[:4]} "
      f"(BatchNorm statistics updated or random numbers drawn); {EVAL_MODE_FIX}."
    )


def split_model(model: nnx.Module) -> tuple[Any, nnx.State, nnx.State]:
  """``nnx.split(model, nnx.Param, ...)``: (graphdef, params, every other variable).

  Raises:
    TypeError: ``model`` is not an ``nnx.Module``.
  """
  check_module(model)
  return nnx.split(model, nnx.Param, ...)


def check_module(model: Any, linen_way: str = "sap_jax.run_sap(apply_fn, variables, ...)") -> None:
  """Raises a TypeError unless ``model`` is an ``nnx.Module`` (naming ``linen_way``, the
  function a Linen model goes to instead)."""
  if not isinstance(model, nnx.Module):
    raise TypeError(
      f"Expected a flax.nnx.Module, got {type(model).__name__}; for a Linen model use "
      f"{linen_way} instead."
    )


def functional(model: nnx.Module) -> tuple[NNXApply, Variables]:
  """``(apply_fn, variables)`` for the SAP core, from an NNX model (not modified).

  ``apply_fn`` runs an eval-mode copy (``.eval()``) of the model.
  """
  graphdef, params, rest = split_model(model)
  copy = nnx.merge(graphdef, params, rest)  # the library's own object
  copy.eval()
  eval_def, params, rest = nnx.split(copy, nnx.Param, ...)
  params_pure, params_def = pure_state(params)
  rest_pure, rest_def = pure_state(rest)
  return NNXApply(eval_def, params_def, rest_def), {"params": params_pure, "rest": rest_pure}


def to_model(model: nnx.Module, variables: Variables) -> nnx.Module:
  """A copy of ``model`` (same structure and mode) holding ``variables``' arrays."""
  graphdef, params, rest = split_model(model)
  _, params_def = pure_state(params)
  _, rest_def = pure_state(rest)
  return NNXApply(graphdef, params_def, rest_def).merge(variables)


def _flat(tree: Any) -> dict[str, Any]:
  return {
    jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def load_linen_variables(model: nnx.Module, variables: Variables) -> nnx.Module:
  """A copy of ``model`` holding a Linen twin's variables (``{"params": …,
  "batch_stats": …}``), for models whose attributes mirror the Linen parameter paths
  (the NNX zoo, `sap_jax.models.get(..., api="nnx")`).

  Raises:
    ValueError: the two trees differ (the message names the first paths that do).
  """
  _, own = functional(model)
  params = variables["params"]
  mine, theirs = _flat(own["params"]), _flat(params)
  if set(mine) != set(theirs) or any(mine[k].shape != theirs[k].shape for k in mine):
    diff = sorted(set(mine) ^ set(theirs)) or [k for k in mine if mine[k].shape != theirs[k].shape]
    raise ValueError(
      f"The Linen params do not match the NNX model's: first differences at {diff[:4]}. "
      "Build the NNX twin with the same hyperparameters as the Linen model."
    )
  rest = jax.tree_util.tree_map(lambda a: a, own["rest"])  # a copy of the containers
  for path, leaf in jax.tree_util.tree_flatten_with_path(variables.get("batch_stats", {}))[0]:
    node = rest
    keys = [k.key for k in path]
    for key in keys[:-1]:
      node = node[key]
    if keys[-1] not in node:
      raise ValueError(f"batch_stats entry {keys} has no NNX counterpart.")
    node[keys[-1]] = leaf
  params = jax.tree_util.tree_unflatten(
    jax.tree_util.tree_structure(own["params"]), [theirs[k] for k in _flat(own["params"])]
  )
  return to_model(model, {"params": params, "rest": rest})


def _flat_leaves(tree: Any) -> dict[str, Any]:
  return {key_path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _split_state(model: nnx.Module) -> tuple[Any, nnx.State, nnx.State, nnx.State]:
  check_module(model)
  return nnx.split(model, nnx.Param, nnx.RngState, ...)


def variables_of(model: nnx.Module) -> Variables:
  """An NNX model's variables as the Linen layout ``{"params": …, ["batch_stats": …]}``.

  ``params``: every `nnx.Param` under its graph path; ``batch_stats`` (only when there
  is any): every other variable but the RNG streams (`nnx.RngState`), e.g.
  `nnx.BatchNorm`'s running ``mean``/``var``. The layout of NNX training
  (`sap_jax.nnx.train_model`) and checkpoints; for the NNX zoo it is the Linen twin's.
  """
  _, params, _, rest = _split_state(model)
  out = {"params": pure_state(params)[0]}
  rest_pure = pure_state(rest)[0]
  if jax.tree_util.tree_leaves(rest_pure):
    out["batch_stats"] = rest_pure
  return out


def with_variables(model: nnx.Module, variables: Variables) -> nnx.Module:
  """A copy of ``model`` (same structure, mode and RNG state) holding ``variables``
  in the layout of `variables_of` (matched by path, so a restored checkpoint's string
  keys fit `nnx.List` indices).

  Raises:
    ValueError: the arrays do not fit the model (the message names the first paths
      that differ).
  """
  graphdef, params, rngs, rest = _split_state(model)
  parts = {}
  for name, state in (("params", params), ("batch_stats", rest)):
    pure, treedef = pure_state(state)
    mine = _flat_leaves(pure)
    theirs = _flat_leaves(variables.get(name, {}))
    if set(mine) != set(theirs) or any(
      tuple(mine[k].shape) != tuple(getattr(theirs[k], "shape", ())) for k in mine
    ):
      diff = sorted(set(mine) ^ set(theirs)) or sorted(
        k for k in mine if tuple(mine[k].shape) != tuple(theirs[k].shape)
      )
      raise ValueError(
        f"The {name} arrays do not fit the NNX model: first differences at "
        f"{[f'{name}/{k}' for k in diff[:4]]}. Build the model with the same "
        "hyperparameters as the one the variables come from."
      )
    paths = jax.tree_util.tree_flatten_with_path(pure)[0]
    leaves = [theirs[key_path_name(p)] for p, _ in paths]
    parts[name] = jax.tree_util.tree_unflatten(treedef, leaves)
  return nnx.merge(graphdef, parts["params"], rngs, parts["batch_stats"])
