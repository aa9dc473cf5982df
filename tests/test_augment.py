"""Published augmentation recipes: crops, flips, RandomResizedCrop, recipes, determinism."""

import numpy as np
import pytest

from sap_jax.data import augment as A


def _image(h, w, c=3, seed=0):
  """Pixels in (0.1, 1]: never zero, so zeros in an output can only be padding."""
  return np.random.default_rng(seed).uniform(0.1, 1.0, (h, w, c)).astype(np.float32)


def _window_offsets(out, padded):
  """Every (top, left) where ``out`` equals a window of ``padded``."""
  th, tw = out.shape[:2]
  h, w = padded.shape[:2]
  return [
    (i, j)
    for i in range(h - th + 1)
    for j in range(w - tw + 1)
    if np.array_equal(padded[i : i + th, j : j + tw], out)
  ]


def test_random_crop_is_a_window_of_the_zero_padded_image_at_every_offset():
  image, p = _image(8, 8, 2), 2
  padded = np.pad(image, ((p, p), (p, p), (0, 0)))
  seen = set()
  for k in range(600):
    out = A.random_crop(image, A.sample_rng(0, 0, k), 8, padding=p)
    assert out.shape == (8, 8, 2)
    offsets = _window_offsets(out, padded)
    assert len(offsets) == 1  # pixels are distinct, so the window is unique
    seen.add(offsets[0])
    # Every zero is padding: the count is the padded area inside the window.
    (i, j) = offsets[0]
    rows = np.arange(i, i + 8)
    cols = np.arange(j, j + 8)
    inside = ((rows >= p) & (rows < 8 + p))[:, None] & ((cols >= p) & (cols < 8 + p))[None, :]
    assert np.count_nonzero(out == 0) == 2 * np.count_nonzero(~inside)
  # All 5 × 5 offsets occur (each has probability 1/25 per draw; 600 draws).
  assert seen == {(i, j) for i in range(5) for j in range(5)}


def test_random_crop_without_padding_and_rectangular_size():
  image = _image(10, 7)
  out = A.random_crop(image, A.sample_rng(1, 0, 0), (4, 7))
  assert out.shape == (4, 7, 3)
  assert len(_window_offsets(out, image)) == 1
  with pytest.raises(ValueError, match="larger than the padded image"):
    A.random_crop(image, A.sample_rng(1, 0, 0), 12, padding=0)


def test_random_flip_is_exact_and_happens_about_half_the_time():
  image = _image(5, 6)
  n, flips = 4000, 0
  for k in range(n):
    out = A.random_flip(image, A.sample_rng(3, 0, k))
    if np.array_equal(out, image[:, ::-1]):
      flips += 1
    else:
      assert np.array_equal(out, image)
  # Binomial(4000, 0.5): sd = 31.6; a 5 sd band.
  assert abs(flips - n / 2) < 5 * np.sqrt(n / 4)
  rng = A.sample_rng(0, 0, 0)
  assert all(np.array_equal(A.random_flip(image, rng, p=0.0), image) for _ in range(20))
  assert all(np.array_equal(A.random_flip(image, rng, p=1.0), image[:, ::-1]) for _ in range(20))


def test_random_resized_crop_boxes_respect_scale_and_ratio():
  height, width = 800, 1000
  scale, ratio = (0.25, 0.5), (3 / 4, 4 / 3)
  fractions, ratios = [], []
  for k in range(500):
    top, left, h, w = A.random_resized_crop_box(height, width, A.sample_rng(0, 0, k), scale, ratio)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    fractions.append(h * w / (height * width))
    ratios.append(w / h)
  fractions, ratios = np.array(fractions), np.array(ratios)
  # Sides >= 300 px: rounding moves area and ratio by < 0.4 %.
  assert fractions.min() >= scale[0] * 0.99 and fractions.max() <= scale[1] * 1.01
  assert ratios.min() >= ratio[0] * 0.99 and ratios.max() <= ratio[1] * 1.01
  # The draws span the ranges (not stuck at the fallback or one end).
  assert fractions.min() < 0.27 and fractions.max() > 0.48
  assert ratios.min() < 0.78 and ratios.max() > 1.28


@pytest.mark.parametrize(
  "height, width, box",
  [
    (40, 100, (0, 23, 40, 53)),  # wide: h = H, w = round(H · 4/3)
    (100, 40, (23, 0, 53, 40)),  # tall: w = W, h = round(W / (3/4))
    (60, 60, (0, 0, 60, 60)),  # ratio in range: the whole image
  ],
)
def test_random_resized_crop_fallback_is_the_clamped_centre_crop(height, width, box):
  # A target area of twice the image never fits, so all 10 attempts fail.
  got = A.random_resized_crop_box(height, width, A.sample_rng(0, 0, 0), scale=(2.0, 2.0))
  assert got == box
  image = _image(height, width)
  out = A.random_resized_crop(image, A.sample_rng(0, 0, 0), 16, scale=(2.0, 2.0))
  top, left, h, w = box
  np.testing.assert_array_equal(out, A.resize(image[top : top + h, left : left + w], 16))


def test_resize_closed_forms():
  # Identity at the same size; constants stay constant.
  image = _image(9, 11)
  np.testing.assert_array_equal(A.resize(image, (9, 11)), image)
  const = np.full((13, 7, 2), 0.375, np.float32)
  np.testing.assert_allclose(A.resize(const, 5), 0.375, rtol=1e-6)
  # Halving a ramp with the (antialiased, symmetric) bilinear filter: interior
  # output pixel i is centred on input coordinate 2i + 0.5, so it reads 2i + 0.5.
  ramp = np.broadcast_to(np.arange(32, dtype=np.float32)[None, :, None], (4, 32, 1)).copy()
  out = A.resize(ramp, (4, 16))
  i = np.arange(2, 14)
  np.testing.assert_allclose(out[0, i, 0], 2 * i + 0.5, atol=1e-4)


def test_normalize_is_per_channel():
  image = _image(3, 4)
  out = A.normalize(image, (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
  np.testing.assert_allclose(out, (image - [0.1, 0.2, 0.3]) / [0.5, 0.25, 2.0], rtol=1e-6)
  assert out.dtype == np.float32


def test_cifar_train_transform_is_flip_then_padded_crop_then_normalize():
  image = _image(32, 32)
  fn = A.train_transform("cifar", image_size=32)
  flipped_both = set()
  for k in range(40):
    out = fn(image, A.sample_rng(0, 1, k))
    raw = out * np.asarray(A.CIFAR_STD, np.float32) + np.asarray(A.CIFAR_MEAN, np.float32)
    raw = np.where(np.isclose(raw, 0, atol=1e-6), 0, raw)
    hits = []
    for flipped, source in ((False, image), (True, image[:, ::-1])):
      padded = np.pad(source, ((4, 4), (4, 4), (0, 0)))
      for i in range(9):
        for j in range(9):
          if np.allclose(padded[i : i + 32, j : j + 32], raw, atol=1e-5):
            hits.append(flipped)
    assert len(hits) == 1
    flipped_both.add(hits[0])
  assert flipped_both == {False, True}


def test_eval_transforms():
  image = _image(32, 32)
  np.testing.assert_allclose(
    A.eval_transform("cifar", image_size=32)(image),
    (image - np.asarray(A.CIFAR_MEAN)) / np.asarray(A.CIFAR_STD),
    rtol=1e-5,
    atol=1e-6,
  )
  big = _image(50, 70)
  out = A.eval_transform("imagenet", image_size=24)(big)
  expected = (A.resize(big, 24) - np.asarray(A.IMAGENET_MEAN)) / np.asarray(A.IMAGENET_STD)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  assert A.eval_transform("none", image_size=1)(image) is image
  assert A.train_transform("none", image_size=1)(image, A.sample_rng(0, 0, 0)) is image


def test_augmentation_depends_only_on_seed_epoch_and_index():
  images = [_image(40, 48, seed=s) for s in range(6)]
  for recipe, size in (("imagenet", 24), ("cifar", 32)):
    fn = A.train_transform(recipe, image_size=size)
    src = images if recipe == "imagenet" else [x[:32, :32] for x in images]
    forward = [fn(x, A.sample_rng(7, 2, i)) for i, x in enumerate(src)]
    # Another order (as another worker count or batch order would give): same outputs.
    backward = {i: fn(src[i], A.sample_rng(7, 2, i)) for i in reversed(range(len(src)))}
    for i in range(len(src)):
      np.testing.assert_array_equal(forward[i], backward[i])
    # Another epoch: different draws.
    other = [fn(x, A.sample_rng(7, 3, i)) for i, x in enumerate(src)]
    assert sum(not np.array_equal(a, b) for a, b in zip(forward, other)) >= len(src) - 1
  a = A.sample_rng(1, 2, 3).random(4)
  np.testing.assert_array_equal(a, A.sample_rng(1, 2, 3).random(4))
  assert not np.array_equal(a, A.sample_rng(1, 2, 4).random(4))
  assert not np.array_equal(a, A.sample_rng(2, 2, 3).random(4))


@pytest.mark.parametrize(
  "name, image_size, recipe",
  [
    ("cifar10", None, "cifar"),
    ("cifar100", None, "cifar"),
    ("cifar10n", None, "cifar"),
    ("CIFAR100N", None, "cifar"),
    ("tfds:cifar10", None, "cifar"),
    ("tfds:cifar100", None, "cifar"),
    ("clothing1m", None, "imagenet"),
    ("webvision", None, "imagenet"),
    ("tfds:imagenet2012", None, "imagenet"),
    ("folder", 224, "imagenet"),
    ("folder", 128, "imagenet"),
    ("folder", 32, "none"),
    ("digits", None, "none"),
    ("mnist1d", None, "none"),
    ("spiral", None, "none"),
    ("tfds:mnist", None, "none"),
    ("tfds:fashion_mnist", None, "none"),
    ("npz", None, "none"),
  ],
)
def test_recipe_rule(name, image_size, recipe):
  assert A.recipe_for(name, image_size=image_size) == recipe


def test_bad_inputs_name_the_problem_and_the_fix():
  with pytest.raises(ValueError, match="no published augmentation recipe.*pass it to"):
    A.recipe_for("svhn")
  with pytest.raises(ValueError, match="needs image_size"):
    A.recipe_for("folder")
  with pytest.raises(ValueError, match="recipe must be one of"):
    A.train_transform("autoaugment", image_size=32)
  with pytest.raises(ValueError, match="image_size must be a positive int"):
    A.eval_transform("cifar", image_size=0)
