"""Model zoo: Flax Linen classifiers selected by name.

Every model is an ``nn.Module`` called as ``model.apply(variables, x, train=...)``
and returns logits ``(N, num_classes)``. Models with BatchNorm keep running
statistics in the ``batch_stats`` collection (pass ``mutable=["batch_stats"]``
when ``train=True``); dropout, where present, is off unless ``train=True`` (and
then needs a ``"dropout"`` rng). Every layer SAP corrects is an ``nn.Dense``,
``nn.DenseGeneral`` or ``nn.Conv``, and every classifier layer is called
``head``.

Example::

  model = sap_jax.models.get("resnet18", num_classes=10, stem="cifar")
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))

New families slot in with :func:`register`::

  @sap_jax.models.register("my_net")
  class MyNet(nn.Module):
    num_classes: int
    ...
"""

import dataclasses
import functools
import inspect
from collections.abc import Callable

import flax.linen as nn

from sap_jax.models.cnn import CNN, CNN1D
from sap_jax.models.inception_resnet import InceptionResNetV2
from sap_jax.models.lenet import LeNet5
from sap_jax.models.mlp import MLP
from sap_jax.models.resnet import (
  BottleneckResNetBlock,
  ResNet,
  ResNet18,
  ResNet34,
  ResNet50,
  ResNetBlock,
)
from sap_jax.models.vgg import VGG, VGG11, VGG13, VGG16
from sap_jax.models.vit import ViT, VitB16, VitTiny

ModelFactory = Callable[..., nn.Module]

_REGISTRY: dict[str, ModelFactory] = {}

# Module fields that are not model hyperparameters.
_NOT_KWARGS = frozenset({"parent", "name", "num_classes"})


def register(name: str, factory: ModelFactory | None = None):
  """Registers a model factory under ``name``.

  A factory is anything called as ``factory(num_classes=..., **kwargs)`` that
  returns an ``nn.Module``: a Module class, or a ``functools.partial`` of one
  that fixes a size variant.

  Args:
    name: Registry name; must not be taken.
    factory: The factory. If omitted, returns a decorator.

  Returns:
    The factory (or a decorator that registers and returns it).

  Raises:
    ValueError: if ``name`` is already registered.
  """

  def add(f: ModelFactory) -> ModelFactory:
    if name in _REGISTRY:
      raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = f
    return f

  return add if factory is None else add(factory)


def known_models() -> tuple[str, ...]:
  """Returns the registered model names, sorted."""
  return tuple(sorted(_REGISTRY))


def _accepted_kwargs(factory: ModelFactory) -> frozenset[str] | None:
  """Keyword arguments ``factory`` takes besides ``num_classes`` (None: any)."""
  fixed: set[str] = set()
  while isinstance(factory, functools.partial):
    fixed |= set(factory.keywords)
    factory = factory.func
  if isinstance(factory, type) and dataclasses.is_dataclass(factory):
    names = {f.name for f in dataclasses.fields(factory) if f.init}
  else:
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
      return None
    names = {p.name for p in params}
  return frozenset(names - _NOT_KWARGS - fixed)


def get(name: str, num_classes: int, api: str = "linen", **kwargs) -> nn.Module:
  """Builds the registered model ``name``.

  Args:
    name: One of :func:`known_models`.
    num_classes: Number of output logits.
    api: "linen" (default), or "nnx" for the Flax NNX twin
      (`sap_jax.models.nnx_zoo.get_nnx`: ``mlp``, ``cnn``, ``resnet18``, ``resnet34``,
      ``resnet50``, ``resnet``, ``vit``, ``vit_tiny``; it takes ``in_features`` and
      ``seed`` and returns a built ``nnx.Module``).
    **kwargs: Hyperparameters of that model (e.g. ``width``, ``stem``). Sizes
      that a named variant fixes (the depth of ``resnet18``, the widths of
      ``vit_b16``) cannot be overridden; use the generic family for that.

  Returns:
    An unbound ``nn.Module``.

  Raises:
    ValueError: if ``name`` is unknown (the message lists the known ones) or a
      hyperparameter value is invalid.
    TypeError: if a keyword argument is not accepted by the model.
  """
  if api == "nnx":
    from sap_jax.models.nnx_zoo import get_nnx

    return get_nnx(name, num_classes, **kwargs)
  if api != "linen":
    raise ValueError(f'api must be "linen" or "nnx", got {api!r}.')
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(known_models())}")
  factory = _REGISTRY[name]
  accepted = _accepted_kwargs(factory)
  if accepted is not None:
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
      raise TypeError(
        f"model {name!r} got unexpected keyword argument(s) {unknown}; "
        f"it accepts {sorted(accepted)}"
      )
  return factory(num_classes=num_classes, **kwargs)


register("mlp", MLP)
register("cnn", CNN)
register("cnn1d", CNN1D)
register("lenet5", LeNet5)
register("vgg11", VGG11)
register("vgg13", VGG13)
register("vgg16", VGG16)
register("resnet18", ResNet18)
register("resnet34", ResNet34)
register("resnet50", ResNet50)
register("vit", ViT)
register("vit_b16", VitB16)
register("vit_tiny", VitTiny)
register("inception_resnet_v2", InceptionResNetV2)

__all__ = [
  "BottleneckResNetBlock",
  "CNN",
  "CNN1D",
  "InceptionResNetV2",
  "LeNet5",
  "MLP",
  "ResNet",
  "ResNet18",
  "ResNet34",
  "ResNet50",
  "ResNetBlock",
  "VGG",
  "VGG11",
  "VGG13",
  "VGG16",
  "ViT",
  "VitB16",
  "VitTiny",
  "get",
  "known_models",
  "register",
]
