"""The NNX model zoo: Flax NNX twins of the Linen models, selected by name.

``sap_jax.models.get(name, num_classes, api="nnx", in_features=..., seed=...)`` builds
one. Each twin has the Linen model's parameter paths and counts, so Linen variables
load into it (`sap_jax.nnx.load_linen_variables`). NNX layers need their input size
when built: ``in_features`` is the input channels (images) or the flattened input
size (``mlp``); ``vit``/``vit_tiny`` also take ``image_size``.
"""

from __future__ import annotations

from collections.abc import Callable

from flax import nnx

from sap_jax.models.nnx_cnn import CNN, MLP
from sap_jax.models.nnx_resnet import ResNet, ResNet18, ResNet34, ResNet50
from sap_jax.models.nnx_vit import ViT, VitTiny

NNX_MODELS: dict[str, Callable[..., nnx.Module]] = {
  "mlp": MLP,
  "cnn": CNN,
  "resnet18": ResNet18,
  "resnet34": ResNet34,
  "resnet50": ResNet50,
  "resnet": ResNet,
  "vit": ViT,
  "vit_tiny": VitTiny,
}
"""name → NNX factory ``f(num_classes, **kwargs, rngs=...)``."""


def get_nnx(name: str, num_classes: int, *, seed: int = 0, **kwargs) -> nnx.Module:
  """Builds the NNX twin of model ``name`` (initialised from ``nnx.Rngs(seed)``).

  Raises:
    ValueError: no NNX twin of that name (the message lists the ones there are).
    TypeError: a keyword argument the model does not take.
  """
  if name not in NNX_MODELS:
    raise ValueError(
      f"model {name!r} has no NNX twin; models with one: {', '.join(sorted(NNX_MODELS))} "
      '(or use api="linen").'
    )
  return NNX_MODELS[name](num_classes, rngs=nnx.Rngs(seed), **kwargs)
