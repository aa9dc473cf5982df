"""Tests for sap_jax.models: forward behaviour, BatchNorm state, registry, sizes.

Forward passes run on tiny variants (a few channels, small inputs). Full-size
models are only traced abstractly with ``jax.eval_shape`` (no FLOPs, no
parameter memory), which is enough for output shapes and parameter counts.
"""

import chex
import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import models

NUM_CLASSES = 3

# id: (registry name, kwargs, input shape, uses BatchNorm). Tiny sizes only.
TINY = {
  "mlp": ("mlp", dict(depth=2, width=8), (4, 8, 8, 1), False),
  "mlp_vector": ("mlp", dict(depth=1, width=8), (4, 5), False),
  "mlp_bn": ("mlp", dict(depth=2, width=8, batch_norm=True), (4, 8, 8, 1), True),
  "cnn": ("cnn", dict(width=4), (4, 8, 8, 1), False),
  "cnn_bn": ("cnn", dict(width=4, batch_norm=True), (4, 8, 8, 1), True),
  "cnn1d": ("cnn1d", dict(width=4), (4, 40, 1), False),
  "cnn1d_bn": ("cnn1d", dict(width=4, batch_norm=True), (4, 40, 1), True),
  "lenet5": ("lenet5", {}, (4, 28, 28, 1), False),
  "vgg11": ("vgg11", dict(width_multiplier=1 / 32), (4, 32, 32, 3), True),
  "vgg13": ("vgg13", dict(width_multiplier=1 / 32), (4, 32, 32, 3), True),
  "vgg16": ("vgg16", dict(width_multiplier=1 / 32), (4, 32, 32, 3), True),
  "resnet18_cifar": ("resnet18", dict(width=4, stem="cifar"), (4, 16, 16, 3), True),
  "resnet18_imagenet": ("resnet18", dict(width=4, stem="imagenet"), (4, 32, 32, 3), True),
  "resnet34": ("resnet34", dict(width=4), (4, 16, 16, 3), True),
  "resnet50": ("resnet50", dict(width=4), (4, 16, 16, 3), True),
  "vit": (
    "vit",
    dict(patch_size=4, hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32),
    (4, 8, 8, 3),
    False,
  ),
  "vit_tiny": ("vit_tiny", {}, (4, 8, 8, 3), False),
  "inception_resnet_v2": (
    "inception_resnet_v2",
    dict(width_multiplier=1 / 16, block_repeats=(1, 1, 1)),
    (4, 75, 75, 3),
    True,
  ),
}
# vit_b16 has fixed sizes (86 M parameters take ~10 s just to sample on CPU); it
# is the `vit` module run above with other sizes, and test_reference_size
# checks its output shape abstractly.
ABSTRACT_ONLY = {"vit_b16"}


def test_every_registered_model_is_tested():
  tested = {name for name, *_ in TINY.values()} | ABSTRACT_ONLY
  assert tested == set(models.known_models())


def _variables(model, x, seed=0):
  """A fast stand-in for ``model.init(key, x)``: same tree, numpy-drawn values.

  Flax's initialisers draw with threefry, whose XLA compilation costs about a
  second per distinct parameter shape on a CPU, so the tests build variables
  from the abstract ``init`` instead: kernels N(0, 1/fan_in), BatchNorm and
  LayerNorm at their initial values (scale 1, shift 0, mean 0, variance 1),
  biases and embeddings small and random.
  """
  abstract = jax.eval_shape(model.init, jax.random.key(0), x)
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    collection, name = path[0].key, path[-1].key
    if collection == "batch_stats":
      return jnp.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype)
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    std = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if name == "kernel" else 0.1
    return jnp.asarray(rng.normal(0.0, std, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, abstract)


def _compile(fn, *args):
  """``jax.jit(fn)`` compiled for ``args`` with XLA's backend optimisations off.

  That halves the compilation time, which dominates these tiny forward passes.
  """
  return jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0})


def test_real_init_matches_the_stand_in_structure():
  model = models.get("mlp", NUM_CLASSES, depth=1, width=8, batch_norm=True)
  x = jnp.zeros((2, 5))
  real = model.init(jax.random.key(0, impl="unsafe_rbg"), x)  # rbg: fast to compile
  chex.assert_trees_all_equal_shapes_and_dtypes(real, _variables(model, x))
  np.testing.assert_array_equal(real["batch_stats"]["bn1"]["var"], np.ones(8))


@pytest.mark.parametrize("case", list(TINY))
def test_forward_and_batch_stats(case):
  name, kwargs, shape, uses_bn = TINY[case]
  model = models.get(name, NUM_CLASSES, **kwargs)
  x = jax.random.normal(jax.random.key(1), shape)
  variables = _variables(model, x)

  def both_modes(variables, x):
    y_eval, state_eval = model.apply(variables, x, train=False, mutable=["batch_stats"])
    y_train, state_train = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return y_eval, state_eval, y_train, state_train

  run = _compile(both_modes, variables, x)
  y_eval, state_eval, y_train, state_train = run(variables, x)
  assert set(variables) == ({"params", "batch_stats"} if uses_bn else {"params"})
  assert variables["params"]["head"]["kernel"].shape[-1] == NUM_CLASSES
  for y in (y_eval, y_train):
    chex.assert_shape(y, (shape[0], NUM_CLASSES))
    chex.assert_tree_all_finite(y)

  # Eval mode: repeatable, per-example (independent of the rest of the batch)
  # and leaves the running statistics alone.
  np.testing.assert_array_equal(run(variables, x)[0], y_eval)
  y_other = run(variables, x.at[1:].multiply(-3.0))[0]
  np.testing.assert_allclose(y_other[0], y_eval[0], rtol=1e-5, atol=1e-6)
  if uses_bn:
    chex.assert_trees_all_equal(state_eval["batch_stats"], variables["batch_stats"])
  else:
    assert not state_eval and not state_train

  if uses_bn:
    # Train mode moves every BatchNorm's running mean or variance.
    old = flax.traverse_util.flatten_dict(variables["batch_stats"])
    new = flax.traverse_util.flatten_dict(state_train["batch_stats"])
    assert old.keys() == new.keys()
    moved = {}
    for path, value in new.items():
      moved[path[:-1]] = moved.get(path[:-1], False) or not np.allclose(value, old[path])
    assert all(moved.values()), [p for p, m in moved.items() if not m]
    # ... and normalises with batch statistics, not the (initial) running ones.
    assert not np.allclose(y_train, y_eval)
  else:
    # No BatchNorm and no active dropout: train and eval compute the same thing.
    np.testing.assert_allclose(y_train, y_eval, rtol=1e-5, atol=1e-6)


def test_vit_dropout_only_in_train_mode():
  model = models.get("vit_tiny", NUM_CLASSES, dropout_rate=0.5, attention_dropout_rate=0.5)
  plain = models.get("vit_tiny", NUM_CLASSES)
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  variables = _variables(model, x)
  y_eval = _compile(model.apply, variables, x)(variables, x)
  np.testing.assert_allclose(y_eval, _compile(plain.apply, variables, x)(variables, x), rtol=1e-6)
  # (rbg keys: threefry's compilation would dominate this test's time)
  keys = [jax.random.key(i, impl="unsafe_rbg") for i in (2, 3)]
  train = _compile(
    lambda v, x, key: model.apply(v, x, train=True, rngs={"dropout": key}), variables, x, keys[0]
  )
  y_a, y_b = (train(variables, x, key) for key in keys)
  assert not np.allclose(y_a, y_b)
  assert not np.allclose(y_a, y_eval)


def _trace_layers(model, shape):
  """Traces ``model.init`` abstractly, recording every Conv/BatchNorm/Dense call.

  Returns:
    A list of ``(module, input, output)`` in call order (the arrays are
    tracers, kept so that identities can be compared) and the abstract
    variables.
  """
  calls = []
  kinds = (nn.Conv, nn.BatchNorm, nn.Dense, nn.DenseGeneral, nn.LayerNorm)

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, kinds):
      calls.append((context.module, args[0], out))
    return out

  with nn.intercept_methods(record):
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros(shape))
  return calls, variables


@pytest.mark.parametrize("case", list(TINY))
def test_every_weight_matrix_is_a_dense_or_conv_layer(case):
  # SAP finds layers by intercepting nn.Dense/nn.DenseGeneral/nn.Conv calls, so
  # no model may multiply by a kernel of its own.
  name, kwargs, shape, _ = TINY[case]
  calls, variables = _trace_layers(models.get(name, NUM_CLASSES, **kwargs), shape)
  layers = {m.path: m for m, _, _ in calls if isinstance(m, (nn.Dense, nn.DenseGeneral, nn.Conv))}
  norms = {m.path for m, _, _ in calls if isinstance(m, (nn.BatchNorm, nn.LayerNorm))}
  for path in flax.traverse_util.flatten_dict(variables["params"]):
    if path[-1] == "kernel":
      assert path[:-1] in layers, path
    elif path[-1] == "scale":
      assert path[:-1] in norms, path
    elif path[-1] == "bias":
      assert path[:-1] in layers or path[:-1] in norms, path
    else:  # the ViT's class token and position embedding are not layers
      assert path in {("cls",), ("pos_embedding",)}, path
  assert type(layers[("head",)]) is nn.Dense


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize(
  "name, stem, shape, projected_blocks",
  [
    ("resnet18", "cifar", (1, 32, 32, 3), ["stage2_block1", "stage3_block1", "stage4_block1"]),
    ("resnet34", "imagenet", (1, 64, 64, 3), ["stage2_block1", "stage3_block1", "stage4_block1"]),
    (
      "resnet50",
      "imagenet",
      (1, 224, 224, 3),
      ["stage1_block1", "stage2_block1", "stage3_block1", "stage4_block1"],
    ),
  ],
)
def test_resnet_convs_are_bias_free_and_batch_normed(name, stem, shape, projected_blocks):
  calls, variables = _trace_layers(models.get(name, 10, stem=stem), shape)
  bn_by_input = {id(x): m for m, x, _ in calls if isinstance(m, nn.BatchNorm)}
  convs = [(m, x, y) for m, x, y in calls if isinstance(m, nn.Conv)]
  for conv, _, y in convs:
    assert conv.use_bias is False, conv.path
    assert id(y) in bn_by_input, f"{conv.path} is not followed by BatchNorm"
  # Bias-free in the parameters too: only BatchNorm layers and the head have biases.
  for path in flax.traverse_util.flatten_dict(variables["params"]):
    if path[-1] == "bias":
      assert path[-2].startswith(("bn", "norm_proj", "stem_bn")) or path == ("head", "bias"), path

  stem_conv = convs[0][0]
  assert stem_conv.name == "stem_conv"
  assert tuple(stem_conv.kernel_size) == ((3, 3) if stem == "cifar" else (7, 7))
  assert _pair(stem_conv.strides) == ((1, 1) if stem == "cifar" else (2, 2))

  # Downsample shortcuts: a 1×1 conv (strided from stage 2 on) + BatchNorm, in
  # exactly the blocks whose shape changes.
  projections = [(m, y) for m, _, y in convs if m.name == "conv_proj"]
  assert [m.path[0] for m, _ in projections] == projected_blocks
  for conv, y in projections:
    assert tuple(conv.kernel_size) == (1, 1)
    assert _pair(conv.strides) == ((1, 1) if conv.path[0] == "stage1_block1" else (2, 2))
    assert bn_by_input[id(y)].name == "norm_proj"


# --- Reference parameter counts -------------------------------------------
#
# Each count is derived below by arithmetic from the published definitions and
# compared with the number the reference implementation reports. Counts are
# those of PyTorch's ``parameters()``: BatchNorm scale and shift count, running
# mean and variance (Flax's ``batch_stats``) do not.


def _bn(c):
  return 2 * c  # scale + shift


def _dense(n_in, n_out):
  return n_in * n_out + n_out


def _resnet_params(stage_sizes, bottleneck, stem, num_classes, width=64):
  """torchvision ``resnet*`` (ImageNet stem) / kuangliu ``ResNet*`` (CIFAR stem)."""
  k = 7 if stem == "imagenet" else 3
  n = k * k * 3 * width + _bn(width)
  c_in = width
  for i, blocks in enumerate(stage_sizes):
    planes = width * 2**i
    for j in range(blocks):
      stride = 2 if i > 0 and j == 0 else 1
      if bottleneck:  # 1×1, 3×3, 1×1 (×4 expansion), all bias-free + BN
        c_out = 4 * planes
        n += c_in * planes + 9 * planes * planes + planes * c_out
        n += _bn(planes) * 2 + _bn(c_out)
      else:  # two 3×3, bias-free + BN
        c_out = planes
        n += 9 * c_in * planes + 9 * planes * planes + 2 * _bn(planes)
      if stride != 1 or c_in != c_out:  # 1×1 projection + BN
        n += c_in * c_out + _bn(c_out)
      c_in = c_out
  return n + _dense(c_in, num_classes)


# kuangliu/pytorch-cifar models/vgg.py ``cfg``.
_KUANGLIU_VGG = {
  "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
  "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def _vgg_params(cfg, num_classes):
  """kuangliu VGG: 3×3 conv with bias + BN per entry, then Linear(512, classes)."""
  n, c_in = 0, 3
  for v in cfg:
    if v != "M":
      n += 9 * c_in * v + v + _bn(v)
      c_in = v
  return n + _dense(c_in, num_classes)


def _vit_params(image, patch, d, layers, mlp, num_classes, channels=3):
  """torchvision ``vit_b_16`` layout."""
  tokens = (image // patch) ** 2 + 1
  embed = patch * patch * channels * d + d  # conv_proj
  embed += d + tokens * d  # class token + position embedding
  block = 2 * d + 3 * _dense(d, d) + _dense(d, d)  # ln_1, in_proj (q, k, v), out_proj
  block += 2 * d + _dense(d, mlp) + _dense(mlp, d)  # ln_2, MLP
  return embed + layers * block + 2 * d + _dense(d, num_classes)  # + final ln, head


def _irv2_params(num_classes):
  """Cadene/timm ``inceptionresnetv2``; returns (parameters, BatchNorm channels)."""
  n = bn_channels = 0

  def unit(kernel, c_in, c_out):  # BasicConv2d: bias-free conv + BN
    nonlocal n, bn_channels
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    n += kh * kw * c_in * c_out + _bn(c_out)
    bn_channels += c_out

  for k, c_in, c_out in [(3, 3, 32), (3, 32, 32), (3, 32, 64), (1, 64, 80), (3, 80, 192)]:
    unit(k, c_in, c_out)  # stem
  for k, c_in, c_out in [
    (1, 192, 96),
    (1, 192, 48),
    (5, 48, 64),
    (1, 192, 64),
    (3, 64, 96),
    (3, 96, 96),
    (1, 192, 64),
  ]:
    unit(k, c_in, c_out)  # mixed_5b → 320
  for _ in range(10):  # Block35
    for k, c_in, c_out in [
      (1, 320, 32),
      (1, 320, 32),
      (3, 32, 32),
      (1, 320, 32),
      (3, 32, 48),
      (3, 48, 64),
    ]:
      unit(k, c_in, c_out)
    n += _dense(128, 320)  # 1×1 conv with bias
  for k, c_in, c_out in [(3, 320, 384), (1, 320, 256), (3, 256, 256), (3, 256, 384)]:
    unit(k, c_in, c_out)  # mixed_6a → 1088
  for _ in range(20):  # Block17
    for k, c_in, c_out in [(1, 1088, 192), (1, 1088, 128), ((1, 7), 128, 160), ((7, 1), 160, 192)]:
      unit(k, c_in, c_out)
    n += _dense(384, 1088)
  for k, c_in, c_out in [
    (1, 1088, 256),
    (3, 256, 384),
    (1, 1088, 256),
    (3, 256, 288),
    (1, 1088, 256),
    (3, 256, 288),
    (3, 288, 320),
  ]:
    unit(k, c_in, c_out)  # mixed_7a → 2080
  for _ in range(10):  # 9 × Block8 + the final one
    for k, c_in, c_out in [(1, 2080, 192), (1, 2080, 192), ((1, 3), 192, 224), ((3, 1), 224, 256)]:
      unit(k, c_in, c_out)
    n += _dense(448, 2080)
  unit(1, 2080, 1536)  # conv2d_7b
  return n + _dense(1536, num_classes), bn_channels


def test_reference_count_helpers_agree_with_published_numbers():
  # torchvision resnet18/34/50 (1000 classes), as listed in torchvision's docs.
  assert _resnet_params((2, 2, 2, 2), False, "imagenet", 1000) == 11_689_512
  assert _resnet_params((3, 4, 6, 3), False, "imagenet", 1000) == 21_797_672
  assert _resnet_params((3, 4, 6, 3), True, "imagenet", 1000) == 25_557_032
  # kuangliu ResNet18 on CIFAR-10: 3×3 stem (1,728 weights instead of 9,408).
  assert _resnet_params((2, 2, 2, 2), False, "cifar", 10) == 11_173_962
  assert 11_689_512 - 513_000 - 9_408 + 1_728 + 5_130 == 11_173_962
  # kuangliu VGG-BN on CIFAR-10 (9.23 M, 9.42 M, 14.73 M).
  assert _vgg_params(_KUANGLIU_VGG["vgg11"], 10) == 9_231_114
  assert _vgg_params(_KUANGLIU_VGG["vgg13"], 10) == 9_416_010
  assert _vgg_params(_KUANGLIU_VGG["vgg16"], 10) == 14_728_266
  # torchvision vit_b_16 at 224 px: 86,567,656; without the head 85,798,656.
  assert _vit_params(224, 16, 768, 12, 3072, 1000) == 86_567_656
  assert 86_567_656 - _dense(768, 1000) == 85_798_656
  # timm inception_resnet_v2: 55,843,464. Cross-check with Keras'
  # InceptionResNetV2 summary (55,873,736 total, 60,544 non-trainable): Keras
  # BatchNorm has no scale and its moving mean/var are counted, so
  # Keras total = ours - C + 2 C for C BatchNorm channels, C = 60,544 / 2.
  irv2, channels = _irv2_params(1000)
  assert irv2 == 55_843_464
  assert channels == 60_544 // 2 and irv2 + channels == 55_873_736
  # LeNet-5 (1 × 32×32, or 28×28 padded by 2): the classic 61,706.
  convs = 6 * 25 + 6 + 16 * 6 * 25 + 16
  assert convs + _dense(400, 120) + _dense(120, 84) + _dense(84, 10) == 61_706


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize(
  "name, kwargs, shape, num_classes, expected",
  [
    ("resnet18", dict(stem="cifar"), (1, 32, 32, 3), 10, 11_173_962),
    ("resnet18", dict(stem="imagenet"), (1, 224, 224, 3), 1000, 11_689_512),
    ("resnet34", dict(stem="imagenet"), (1, 224, 224, 3), 1000, 21_797_672),
    ("resnet50", dict(stem="imagenet"), (1, 224, 224, 3), 1000, 25_557_032),
    (
      "resnet50",
      dict(stem="cifar"),
      (1, 32, 32, 3),
      10,
      _resnet_params((3, 4, 6, 3), True, "cifar", 10),
    ),
    ("vgg11", {}, (1, 32, 32, 3), 10, 9_231_114),
    ("vgg13", {}, (1, 32, 32, 3), 10, 9_416_010),
    ("vgg16", {}, (1, 32, 32, 3), 10, 14_728_266),
    ("vgg11", {}, (1, 32, 32, 3), 100, _vgg_params(_KUANGLIU_VGG["vgg11"], 100)),
    ("vit_b16", {}, (1, 224, 224, 3), 1000, 86_567_656),
    ("vit_b16", {}, (1, 224, 224, 3), 14, _vit_params(224, 16, 768, 12, 3072, 14)),
    ("inception_resnet_v2", {}, (1, 299, 299, 3), 1000, 55_843_464),
    ("lenet5", {}, (1, 28, 28, 1), 10, 61_706),
    ("mlp", {}, (1, 28, 28, 1), 10, _dense(784, 256) + 2 * _dense(256, 256) + _dense(256, 10)),
    (
      "mlp",
      dict(batch_norm=True),
      (1, 784),
      10,
      784 * 256 + 2 * 256 * 256 + 3 * _bn(256) + _dense(256, 10),
    ),
  ],
)
def test_reference_size(name, kwargs, shape, num_classes, expected):
  model = models.get(name, num_classes, **kwargs)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  assert _count(variables["params"]) == expected
  # (train mode is traced in test_forward_and_batch_stats at tiny sizes)
  assert jax.eval_shape(model.apply, variables, x).shape == (shape[0], num_classes)


def test_vit_b16_sizes():
  variables = jax.eval_shape(
    models.get("vit_b16", 1000).init, jax.random.key(0), jnp.zeros((1, 224, 224, 3))
  )
  params = variables["params"]
  assert params["patch_embed"]["kernel"].shape == (16, 16, 3, 768)
  assert params["pos_embedding"].shape == (1, 197, 768)
  assert params["cls"].shape == (1, 1, 768)
  assert len([k for k in params if k.startswith("encoderblock_")]) == 12
  attn = params["encoderblock_0"]["attn"]
  assert attn["query"]["kernel"].shape == (768, 12, 64)
  assert attn["out"]["kernel"].shape == (12, 64, 768)
  assert params["encoderblock_0"]["mlp"]["fc1"]["kernel"].shape == (768, 3072)
  assert _count(params) - _count(params["head"]) == 85_798_656


# --- Registry ---------------------------------------------------------------


def test_known_models_has_the_documented_names():
  assert set(models.known_models()) >= {
    "mlp",
    "cnn",
    "cnn1d",
    "lenet5",
    "vgg11",
    "vgg13",
    "vgg16",
    "resnet18",
    "resnet34",
    "resnet50",
    "vit",
    "vit_b16",
    "vit_tiny",
    "inception_resnet_v2",
  }
  assert list(models.known_models()) == sorted(models.known_models())


def test_unknown_name_lists_known_models():
  with pytest.raises(ValueError, match="resnet19") as info:
    models.get("resnet19", 10)
  for name in models.known_models():
    assert name in str(info.value)


def test_unknown_kwarg_is_a_clear_type_error():
  with pytest.raises(TypeError, match=r"widht.*width"):
    models.get("resnet18", 10, widht=8)
  with pytest.raises(TypeError, match="depth"):
    models.get("cnn", 10, depth=3)


def test_variant_sizes_cannot_be_overridden():
  with pytest.raises(TypeError, match="hidden_size"):
    models.get("vit_b16", 10, hidden_size=64)
  with pytest.raises(TypeError, match="stage_sizes"):
    models.get("resnet18", 10, stage_sizes=(1, 1, 1, 1))
  assert models.get("vit", 10, hidden_size=64, num_heads=4).hidden_size == 64


def test_invalid_values_fail_at_construction():
  with pytest.raises(ValueError, match="stem"):
    models.get("resnet18", 10, stem="tiny")
  with pytest.raises(ValueError, match="divisible"):
    models.get("vit", 10, hidden_size=10, num_heads=3)
  with pytest.raises(ValueError, match="block_repeats"):
    models.get("inception_resnet_v2", 10, block_repeats=(1, 1))


def test_register_adds_a_family(monkeypatch):
  monkeypatch.setattr(models, "_REGISTRY", dict(models._REGISTRY))

  @models.register("linear")
  class Linear(nn.Module):
    num_classes: int
    bias: bool = True

    @nn.compact
    def __call__(self, x, train: bool = False):
      return nn.Dense(self.num_classes, use_bias=self.bias, name="head")(x)

  assert "linear" in models.known_models()
  model = models.get("linear", 4, bias=False)
  assert isinstance(model, Linear) and model.num_classes == 4
  with pytest.raises(TypeError, match="width"):
    models.get("linear", 4, width=3)
  with pytest.raises(ValueError, match="already registered"):
    models.register("linear", Linear)
