"""Checks `sap_jax.convert.torchvision` against torchvision itself, and writes the test fixtures.

Needs torch and torchvision, which are not dependencies of sap_jax: run it from a
separate environment that has both and sap_jax installed::

  python3.11 -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.14.1 torchvision==0.29.1
  /tmp/torchvenv/bin/pip install -c constraints.txt -e .
  /tmp/torchvenv/bin/python tools/verify_torchvision_converters.py [--skip-full] [--no-fixtures]

For torchvision's resnet18, resnet34, resnet50 and vit_b_16 (random weights, random
BatchNorm running statistics, eval mode) it converts the state dict, runs the
registry's Linen model on the same random inputs and prints the largest logit
difference relative to the largest torch logit, ``max|jax - torch| / max|torch|``
(float32 on CPU; it must stay <= 1e-4).

It also writes the fixtures that `tests/test_convert_torchvision.py` reads without
torch: reduced-width torchvision-named ResNets (basic and bottleneck blocks) and a
reduced ``torchvision.models.VisionTransformer``: their state dicts (``state/<name>``),
inputs (``input``, NHWC) and torch logits (``logits``), in ``tests/fixtures/``.

Finally it compares the augmentation helpers with torchvision's: the
RandomResizedCrop fallback box (which needs no random draws) and the bilinear resize.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

import sap_jax.models
from sap_jax.convert import torchvision as convert
from sap_jax.data import augment

TOLERANCE = 1e-4
FIXTURES = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")


class SmallResNet(tv_resnet.ResNet):
  """torchvision's ResNet (same names, blocks and forward) with stem width ``width``."""

  def __init__(self, block, layers, num_classes: int, width: int):
    nn.Module.__init__(self)
    self._norm_layer = nn.BatchNorm2d
    self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
    self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, width, layers[0])
    self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
    self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
    self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(width * 8 * block.expansion, num_classes)


def randomize(model: nn.Module, seed: int) -> nn.Module:
  """Random weights everywhere (torchvision zero-initialises some), random BN statistics."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1 and name.endswith("weight"):  # BatchNorm / LayerNorm scale
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif p.ndim == 1 or name == "class_token":
        p.copy_(0.1 * torch.randn(p.shape, generator=gen))
      elif name.startswith("heads.head") or name.endswith("pos_embedding"):
        p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(0.1 * torch.randn(b.shape, generator=gen))
      elif name.endswith("running_var"):
        b.copy_(0.5 + 1.5 * torch.rand(b.shape, generator=gen))
  return model.eval()


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def torch_logits(model: nn.Module, x_nhwc: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def jax_logits(model, variables, x_nhwc: np.ndarray) -> np.ndarray:
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return np.asarray(apply(variables, jnp.asarray(x_nhwc)))


def check_converted(flax_model, variables, x):
  """The converted tree has the Linen model's exact structure and shapes."""
  want = jax.tree_util.tree_map(
    jnp.shape, jax.eval_shape(flax_model.init, jax.random.key(0), jnp.asarray(x[:1]))
  )
  got = jax.tree_util.tree_map(jnp.shape, variables)
  if want != got:
    raise SystemExit(f"converted tree differs from the model's:\n{got}\nvs\n{want}")


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def compare(name, torch_model, flax_model, variables, x) -> float:
  check_converted(flax_model, variables, x)
  ref = torch_logits(torch_model, x)
  got = jax_logits(flax_model, variables, x)
  diff = rel_diff(got, ref)
  print(
    f"{name:28s} max|jax - torch| / max|torch| = {diff:.3e}  (logit scale {np.abs(ref).max():.3g})"
  )
  return diff


def full_models(rng: np.random.Generator) -> list[float]:
  x = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
  diffs = []
  for name in ("resnet18", "resnet34", "resnet50"):
    tm = randomize(getattr(torchvision.models, name)(weights=None), seed=1)
    variables = convert.resnet_variables(numpy_state(tm))
    fm = sap_jax.models.get(name, num_classes=1000, stem="imagenet")
    diffs.append(compare(name, tm, fm, variables, x))
  tm = randomize(torchvision.models.vit_b_16(weights=None), seed=2)
  variables = convert.vit_variables(numpy_state(tm), num_heads=12)
  fm = sap_jax.models.get("vit_b16", num_classes=1000)
  diffs.append(compare("vit_b_16", tm, fm, variables, x))
  return diffs


def write_fixture(path: str, torch_model: nn.Module, x: np.ndarray) -> None:
  arrays = {f"state/{k}": v for k, v in numpy_state(torch_model).items()}
  arrays["input"] = x
  arrays["logits"] = torch_logits(torch_model, x)
  np.savez_compressed(path, **arrays)
  print(f"wrote {os.path.relpath(path)} ({os.path.getsize(path) / 1024:.0f} KiB)")


def small_models(rng: np.random.Generator, write: bool) -> list[float]:
  """The reduced models of the fixtures; each is also checked here."""
  diffs = []
  cases = [
    ("resnet18_small", tv_resnet.BasicBlock, (2, 2, 2, 2), 4, sap_jax.models.ResNetBlock),
    ("resnet50_small", tv_resnet.Bottleneck, (3, 4, 6, 3), 2, sap_jax.models.BottleneckResNetBlock),
  ]
  x = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  for name, block, layers, width, flax_block in cases:
    tm = randomize(SmallResNet(block, layers, num_classes=10, width=width), seed=3)
    fm = sap_jax.models.ResNet(
      num_classes=10, stage_sizes=layers, block_cls=flax_block, stem="imagenet", width=width
    )
    diffs.append(compare(name, tm, fm, convert.resnet_variables(numpy_state(tm)), x))
    if write:
      write_fixture(os.path.join(FIXTURES, f"torchvision_{name}.npz"), tm, x)
  tm = randomize(
    torchvision.models.VisionTransformer(
      image_size=32,
      patch_size=8,
      num_layers=2,
      num_heads=2,
      hidden_dim=32,
      mlp_dim=64,
      num_classes=10,
    ),
    seed=4,
  )
  fm = sap_jax.models.ViT(
    num_classes=10, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64
  )
  xv = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  diffs.append(
    compare("vit_small", tm, fm, convert.vit_variables(numpy_state(tm), num_heads=2), xv)
  )
  if write:
    write_fixture(os.path.join(FIXTURES, "torchvision_vit_small.npz"), tm, xv)
  return diffs


def augmentation_checks(rng: np.random.Generator) -> None:
  """RandomResizedCrop's fallback box and the resize against torchvision's."""
  from torchvision.transforms import v2
  from torchvision.transforms.v2 import functional as F

  for h, w in ((40, 100), (100, 40), (60, 60), (37, 91)):
    img = torch.zeros(3, h, w)
    want = v2.RandomResizedCrop.get_params if hasattr(v2.RandomResizedCrop, "get_params") else None
    if want is None:
      from torchvision.transforms import RandomResizedCrop

      want = RandomResizedCrop.get_params
    ref = tuple(int(v) for v in want(img, scale=[2.0, 2.0], ratio=[3 / 4, 4 / 3]))
    got = augment.random_resized_crop_box(h, w, np.random.default_rng(0), scale=(2.0, 2.0))
    print(f"RandomResizedCrop fallback box {h}x{w}: torchvision {ref}, sap_jax {got}")
    if ref != got:
      raise SystemExit("fallback boxes differ")
  # Boxes with random draws: the two RNGs differ, so compare the distributions' means.
  n, (h, w) = 20000, (60, 150)
  ours = np.array(
    [augment.random_resized_crop_box(h, w, augment.sample_rng(0, 0, i)) for i in range(n)], float
  )
  theirs = np.array(
    [[int(v) for v in want(torch.zeros(3, h, w), [0.08, 1.0], [3 / 4, 4 / 3])] for _ in range(n)],
    float,
  )
  se = np.sqrt((ours.var(0) + theirs.var(0)) / n)
  z = np.abs(ours.mean(0) - theirs.mean(0)) / se
  print(
    f"RandomResizedCrop boxes {h}x{w}, {n} draws each: mean (top, left, h, w) sap_jax "
    f"{np.round(ours.mean(0), 2)}, torchvision {np.round(theirs.mean(0), 2)}, |z| {np.round(z, 1)}"
  )
  if z.max() > 5:
    raise SystemExit("RandomResizedCrop box distributions differ")
  for shape, size in (((50, 70, 3), (24, 24)), ((20, 30, 3), (40, 40))):
    img = rng.uniform(0, 1, shape).astype(np.float32)
    ref = F.resize(torch.from_numpy(img).permute(2, 0, 1), list(size), antialias=True)
    ref = ref.permute(1, 2, 0).numpy()
    got = augment.resize(img, size)
    print(
      f"resize {shape[:2]} -> {size}: max|sap_jax - torchvision tensor antialias| = "
      f"{np.abs(got - ref).max():.2e}"
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--skip-full", action="store_true", help="skip the full-size models")
  parser.add_argument("--no-fixtures", action="store_true", help="do not write tests/fixtures")
  args = parser.parse_args()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  os.makedirs(FIXTURES, exist_ok=True)
  diffs = small_models(rng, write=not args.no_fixtures)
  if not args.skip_full:
    diffs += full_models(rng)
  augmentation_checks(rng)
  worst = max(diffs)
  print(f"worst relative logit difference {worst:.3e} (tolerance {TOLERANCE:g})")
  if worst > TOLERANCE:
    raise SystemExit(1)


if __name__ == "__main__":
  main()
