"""An Einsum layer as a DenseGeneral over its contracting axes.

``y = einsum("lhs,rhs->out", x, K)`` (`nn.Einsum`, `nnx.Einsum`) is a DenseGeneral when
every kernel axis is either contracted with the input (in ``lhs``, not in ``out``) or an
output axis (in ``out``, not in ``lhs``), and every input axis is contracted or kept in
the output. Its rows are then the input's contracting axes, flattened in the kernel's
order, every other axis folded into rows, exactly as `nn.DenseGeneral`'s. `einsum_twin`
gives the input permutation that puts the contracting axes last in the kernel's order,
and the `nn.DenseGeneral` whose rows and layout the core reads; the layout's kernel
shape is the Einsum's own when the contracting axes lead in the kernel (``"btd,dnh->btnh"``).
Other equations (batch axes shared by kernel and output, a kernel whose output axes come
first, ellipses) are not covered: `einsum_twin` says why.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn


def parse(einsum_str: str) -> tuple[str, str, str]:
  """``(lhs, rhs, out)`` of a two-operand explicit equation."""
  eq = einsum_str.replace(" ", "")
  if "->" not in eq or eq.count(",") != 1:
    raise ValueError(f"einsum_str {einsum_str!r} is not of the form 'lhs,rhs->out'.")
  ins, out = eq.split("->")
  lhs, rhs = ins.split(",")
  return lhs, rhs, out


def einsum_twin(
  einsum_str: str, kernel_shape: Sequence[int]
) -> tuple[tuple[int, ...], nn.DenseGeneral] | str:
  """The input permutation and DenseGeneral twin of an Einsum layer, or why not.

  Args:
    einsum_str: the layer's equation, input first, kernel second.
    kernel_shape: the kernel's shape.

  Returns:
    ``(perm, twin)``: ``x.transpose(perm)`` moves the contracting axes last, in the
    kernel's order; ``twin`` is an unbound `nn.DenseGeneral` over those last axes whose
    kernel shape is ``kernel_shape``. Or a string: the reason the layer is not covered.
  """
  lhs, rhs, out = parse(einsum_str)
  if "." in lhs + rhs + out:
    return "an ellipsis ('...') in the equation"
  for letter in rhs:
    if letter in lhs and letter in out:
      return f"kernel axis {letter!r} is a batch axis (in the input and the output)"
    if letter not in lhs and letter not in out:
      return f"kernel axis {letter!r} is summed over alone"
  for letter in lhs:
    if letter not in rhs and letter not in out:
      return f"input axis {letter!r} is summed over alone"
  contracted = [c for c in rhs if c in lhs]
  if not contracted:
    return "no input axis is contracted with the kernel"
  if list(rhs[: len(contracted)]) != contracted:
    return (
      f"the kernel's contracting axes {''.join(contracted)!r} do not come first in the "
      f"kernel ({rhs!r}); reorder the kernel axes (e.g. {''.join(contracted)}"
      f"{''.join(c for c in rhs if c not in lhs)})"
    )
  free = [i for i, c in enumerate(lhs) if c not in rhs]
  perm = tuple(free) + tuple(lhs.index(c) for c in contracted)
  features = tuple(int(kernel_shape[i]) for i in range(len(contracted), len(rhs)))
  n = len(contracted)
  return perm, nn.DenseGeneral(features=features, axis=tuple(range(-n, 0)))
