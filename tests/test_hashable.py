"""sap_jax.hashable: functions as static jit arguments, value-equal module forwards."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sap_jax.hashable import EvalApply, ModuleApply, hashable


class _Head(nn.Module):
  features: int = 3

  @nn.compact
  def __call__(self, x, train=False):
    y = nn.Dense(self.features)(x)
    return y + 1.0 if train else y


@dataclasses.dataclass  # eq=True without frozen: __hash__ is None
class _Unhashable:
  scale: float

  def __call__(self, v, x):
    return self.scale * x


def _plain(v, x):
  return x


def test_hashable_returns_hashable_functions_themselves():
  assert hashable(_plain) is _plain
  part = functools.partial(_plain, {})
  assert hashable(part) is part
  forward = EvalApply(_Head())
  assert hashable(forward) is forward


def test_hashable_wraps_an_unhashable_callable_by_identity():
  fn = _Unhashable(2.0)
  wrapped = hashable(fn)
  assert wrapped is not fn
  assert wrapped(None, 3.0) == 6.0
  assert hash(wrapped) == hash(hashable(fn))
  assert wrapped == hashable(fn)  # two wrappers of one function are equal …
  twin = _Unhashable(2.0)
  assert twin == fn
  assert hashable(twin) != wrapped  # … wrappers of an equal but distinct one are not
  assert wrapped != fn


def test_module_forwards_equal_and_equally_hashed_for_equal_modules():
  for cls in (EvalApply, ModuleApply):
    a, b = cls(_Head(3)), cls(_Head(3))
    assert a is not b and a == b and hash(a) == hash(b)
    assert cls(_Head(3)) != cls(_Head(4))
  assert EvalApply(_Head(3)) != ModuleApply(_Head(3))


def test_module_forwards_call_apply():
  model = _Head(3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
  v = model.init(jax.random.key(0), x)
  np.testing.assert_array_equal(EvalApply(model)(v, x), model.apply(v, x, train=False))
  np.testing.assert_array_equal(ModuleApply(model)(v, x, train=True), model.apply(v, x, train=True))
  np.testing.assert_array_equal(ModuleApply(model)(v, x, train=True), EvalApply(model)(v, x) + 1.0)


def test_equal_module_forwards_share_one_compilation():
  @functools.partial(jax.jit, static_argnums=0)
  def run(apply_fn, v, x):
    return apply_fn(v, x)

  x = jnp.ones((2, 7))
  v = _Head(2).init(jax.random.key(1), x)
  run(EvalApply(_Head(2)), v, x)
  run(EvalApply(_Head(2)), v, x)
  assert run._cache_size() == 1
  run(hashable(_Unhashable(1.0)), v, x)
  run(hashable(_Unhashable(1.0)), v, x)  # a distinct object: compiled again
  assert run._cache_size() == 3
