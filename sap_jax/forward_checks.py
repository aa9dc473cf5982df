"""Is ``apply_fn(variables, x)`` a forward the library can use? The checks of the model.

Part of `sap_jax.input_checks` (which re-exports every name here): the forward must
return the logits, one ``(N, K)`` floating array (`check_logits_output`), be a
Linen-style forward and not an NNX module (`check_not_nnx`: that goes to `sap_jax.nnx`),
run in eval mode (a forward that needs ``rngs`` or a ``mutable`` collection is refused
naming the eval-mode fix, `forward_failure`, `TrainModeForward`), and read its
``variables`` (one that closes over its own is refused: SAP's corrected kernels would
never reach it, `check_reads_variables`); logits that look like probabilities get a
warning (`warn_if_probabilities`). `output_width` is the model's K, from one shape-only
trace (`traced_output`).
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.hashable import hashable
from sap_jax.types import ApplyFn, Variables

__all__ = [
  "EVAL_MODE_FIX",
  "NNX_FIX",
  "PROBABILITIES_WARNING",
  "WRAP_FIX",
  "TrainModeForward",
  "check_logits_output",
  "check_not_nnx",
  "check_reads_variables",
  "forward_failure",
  "looks_like_probabilities",
  "output_width",
  "traced_output",
  "warn_if_probabilities",
]


WRAP_FIX = (
  "apply_fn(variables, x) must return the logits as one (N, K) array: wrap the forward, "
  "e.g. def logits_fn(variables, x): return model.apply(variables, x, train=False){index}"
)
"""The default advice of `check_logits_output` (``{index}`` names the part to return)."""


EVAL_MODE_FIX = (
  "pass the eval-mode forward: for Linen functools.partial(model.apply, train=False) (the "
  "flag that turns dropout off and makes BatchNorm use its running averages), for NNX the "
  "module itself to sap_jax.nnx, which runs model.eval() (its __call__ must not pass "
  "deterministic=False or use_running_average=False itself)"
)
"""The fix every train-mode-forward refusal names."""


NNX_FIX = (
  "the Linen API takes apply_fn(variables, x) and its variables; use sap_jax.nnx, which takes "
  "the module itself (e.g. sap_jax.nnx.run_sap(model, x_train, y_train, x_val, y_val))"
)
"""The fix when an NNX module reaches the Linen API."""


class TrainModeForward(ValueError):
  """A forward that runs in train mode (it draws random numbers or updates state)."""


def check_logits_output(out: Any, what: str = "apply_fn", *, fix: str = WRAP_FIX) -> Any:
  """``out`` (an array, or its ``jax.eval_shape`` stand-in) if it is ``(N, K)`` logits.

  The one rule for forwards: ``apply_fn(variables, x)`` returns the logits, one
  floating ``(N, K)`` array. A tuple, list or dict (logits plus features, a
  ``{"logits": …}`` output) is refused with how to wrap it, never unpacked by
  guesswork. Runs at trace time too (on tracers), so jitted losses and evaluations
  call it on their forward's output.

  Args:
    out: the forward's output.
    what: the forward's name in the message.
    fix: the advice for a tuple, dict or other non-array output; ``{index}`` in it
      becomes the part to return (``[0]``, ``['logits']``).

  Raises:
    ValueError: anything but one 2-D floating array.
  """
  if isinstance(out, Mapping):
    keys = sorted(map(str, out))
    index = "['logits']" if "logits" in keys else f"[{keys[0]!r}]" if keys else ""
    raise ValueError(
      f"{what} returned a dict with keys {keys}, not logits; "
      f"{fix.replace('{index}', index)} (the entry that holds the logits)."
    )
  if isinstance(out, (tuple, list)):
    raise ValueError(
      f"{what} returned a {type(out).__name__} of {len(out)}, not logits; "
      f"{fix.replace('{index}', '[0]')} (the element that holds the logits)."
    )
  if not hasattr(out, "shape") or not hasattr(out, "dtype"):
    raise ValueError(
      f"{what} returned {type(out).__name__}, not logits; {fix.replace('{index}', '')}."
    )
  if len(out.shape) != 2:
    fix = (
      "return the logits, not one value per sample (predicted classes, a loss)"
      if len(out.shape) < 2
      else "flatten or pool the output in the model"
    )
    raise ValueError(
      f"{what} returned shape {tuple(out.shape)}; expected logits of shape (batch, "
      f"num_classes): {fix}."
    )
  dtype = np.dtype(out.dtype)
  if not (np.issubdtype(dtype, np.floating) or dtype.kind == "V"):
    raise ValueError(
      f"{what} returned dtype {dtype}; expected floating logits, not predicted classes."
    )
  return out


def _is_nnx(obj: Any) -> bool:
  nnx = sys.modules.get("flax.nnx")  # no NNX module exists unless flax.nnx was imported
  return nnx is not None and isinstance(obj, nnx.Module)


def check_not_nnx(apply_fn: Any, variables: Any = None, what: str = "apply_fn") -> None:
  """Refuses a ``flax.nnx`` module given to the Linen API (as ``apply_fn`` or as
  ``variables``), naming `sap_jax.nnx`."""
  fn = getattr(apply_fn, "fn", apply_fn)  # `sap_jax.hashable.hashable`'s wrapper
  for name, obj in ((what, fn), ("variables", variables)):
    if _is_nnx(obj):
      raise ValueError(
        f"{name} is a flax.nnx module ({type(obj).__name__}), not a Linen forward; {NNX_FIX}."
      )


def forward_failure(err: BaseException, what: str = "apply_fn(variables, x)") -> str | None:
  """The message for a forward that failed because it runs in train mode, or None.

  Recognised: it needs an RNG (Linen ``InvalidRngError``, NNX dropout without ``rngs``, a
  ``__call__`` that takes ``rngs``), it updates a collection (Linen
  ``ModifyScopeVariableError``: BatchNorm's ``batch_stats``), it uses an unbound axis
  name (BatchNorm with ``axis_name`` in train mode), or `TrainModeForward` (an NNX model
  whose call changed its own state)."""
  if isinstance(err, TrainModeForward):
    return str(err)
  name, text = type(err).__name__, str(err)
  cause = None
  if (
    name == "InvalidRngError"
    or "needs PRNG" in text
    or "no `rngs` argument" in text
    or re.search(r"argument: '(rngs|rng|key|dropout_rng)'", text)
  ):
    cause = "it needs random numbers (rngs): dropout or another stochastic layer is on"
  elif name == "ModifyScopeVariableError" or re.search(r'collection "\w+" is immutable', text):
    found = re.search(r'collection "(\w+)"', text)
    collection = found.group(1) if found else "batch_stats"
    cause = (
      f"it updates its {collection!r} collection (it needs mutable=[{collection!r}]): "
      "BatchNorm or another layer is in train mode"
    )
  elif "unbound axis name" in text:
    found = re.search(r"unbound axis name: (\S+?)\.?(\s|$)", text)
    axis = f" {found.group(1)!r}" if found else ""
    cause = (
      f"it uses the device axis name{axis} (a collective: BatchNorm with axis_name in train mode)"
    )
  if cause is None:
    return None
  return f"{what} is a train-mode forward: {cause}; {EVAL_MODE_FIX}."


def traced_output(fn: Any, *args: Any, what: str = "apply_fn(variables, x)") -> Any:
  """``jax.eval_shape(fn, *args)`` (shapes only, no FLOPs), a failure reported as a
  ValueError naming the call, the error it raised and the likely fix: an NNX module
  (`check_not_nnx`), a train-mode forward (`forward_failure`), else inputs of the wrong
  per-example shape or variables of another model."""
  check_not_nnx(fn, args[0] if args else None)
  try:
    return jax.eval_shape(fn, *args)
  except Exception as err:  # noqa: BLE001 — any failure of the user's forward is reported
    train_mode = forward_failure(err, what)
    if train_mode is not None:
      raise TrainModeForward(train_mode) from err
    detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
    shapes = ", ".join(
      f"{tuple(a.shape)} {a.dtype}" for a in args if isinstance(a, jax.ShapeDtypeStruct)
    )
    raise ValueError(
      f"{what} fails on a sample of shape {shapes} ({type(err).__name__}: {detail}); pass "
      "inputs with the per-example shape the model was built for, and its own variables."
    ) from err


_READS: dict[Any, bool] = {}  # (apply_fn, tree structure, shapes) → whether params are read


def _reads_params(fn: Any, variables: Any, sample: jax.ShapeDtypeStruct) -> bool:
  """Whether ``fn(variables, sample)``'s output depends on any leaf of
  ``variables["params"]`` (every leaf when there is no ``"params"``): one trace to a
  jaxpr (no FLOPs), cached per function and shapes."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(variables)
  avals = tuple(
    (tuple(np.shape(leaf)), str(getattr(leaf, "dtype", type(leaf).__name__))) for _, leaf in flat
  )
  key = (fn, treedef, avals, sample.shape, str(sample.dtype))
  if key in _READS:
    return _READS[key]
  has_params = isinstance(variables, Mapping) and "params" in variables

  def is_param(path) -> bool:
    return not has_params or (bool(path) and getattr(path[0], "key", None) == "params")

  wanted = [i for i, (path, _) in enumerate(flat) if is_param(path)]
  if not wanted:
    return True
  leaves = [leaf for _, leaf in flat]  # abstracted by the trace: no FLOPs
  closed = jax.make_jaxpr(lambda ls, x: fn(jax.tree_util.tree_unflatten(treedef, ls), x))(
    leaves, sample
  )
  jaxpr = closed.jaxpr
  used = {id(v) for eqn in jaxpr.eqns for v in eqn.invars}
  used |= {id(v) for v in jaxpr.outvars}
  reads = any(id(jaxpr.invars[i]) in used for i in wanted)
  if len(_READS) > 64:
    _READS.clear()
  _READS[key] = reads
  return reads


def check_reads_variables(apply_fn: ApplyFn, variables: Variables, x: Any) -> None:
  """Refuses a forward whose output does not depend on its ``variables``' params (it
  closes over a model's variables of its own): SAP's corrected kernels would never reach
  it, and every α would score as the original model. Shapes only (one trace)."""
  sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
  if not _reads_params(hashable(apply_fn), variables, sample):
    raise ValueError(
      "apply_fn(variables, x) ignores its variables (its output does not depend on any "
      "params leaf: it closes over the model's variables of its own), so corrected "
      "variables would never reach it; pass a forward that uses the variables it is "
      "given, e.g. functools.partial(model.apply, train=False) or "
      "lambda variables, x: model.apply(variables, x, train=False)."
    )


def looks_like_probabilities(logits: Any, atol: float = 1e-3) -> Any:
  """bool[N] (numpy or traced): whether each row is non-negative and sums to 1, as
  softmax outputs do (K ≥ 2); logits almost never are."""
  xp = jnp if isinstance(logits, jax.Array) else np
  if logits.shape[-1] < 2:
    return xp.zeros(logits.shape[:-1], bool)
  return xp.all(logits >= 0, axis=-1) & (xp.abs(xp.sum(logits, axis=-1) - 1) <= atol)


PROBABILITIES_WARNING = (
  "{what} returns rows that are non-negative and sum to 1 (probabilities, e.g. after a "
  "softmax), but sap_jax expects logits: cross-entropy and the trusted set are computed from "
  "log_softmax of the output; return the logits (drop the final softmax)."
)


def warn_if_probabilities(all_rows: bool, what: str = "apply_fn(variables, x)") -> None:
  """Warns (UserWarning) when every output row looked like probabilities."""
  if all_rows:
    warnings.warn(PROBABILITIES_WARNING.format(what=what), UserWarning, stacklevel=3)


def output_width(apply_fn: ApplyFn, variables: Variables, x: Any) -> int:
  """K, the model's number of outputs, from a shape-only trace on one sample.

  ``jax.eval_shape`` of ``apply_fn(variables, x[:1])`` (`traced_output`): no FLOPs,
  and cached by JAX for an equal ``apply_fn`` and equal shapes (sub-millisecond on a
  second call). The output is checked with `check_logits_output`, and the forward with
  `check_reads_variables` (one more trace per model, cached).

  Args:
    apply_fn: eval-mode forward ``apply_fn(variables, x) -> logits``.
    variables: the model variables.
    x: ``(N, ...)`` inputs, N ≥ 1 (only the shape and dtype of one sample are used).

  Returns:
    The width K of the logits.
  """
  sample = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
  out = traced_output(hashable(apply_fn), variables, sample)
  width = int(check_logits_output(out).shape[-1])
  check_reads_variables(apply_fn, variables, x)
  return width
