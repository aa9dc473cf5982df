"""`NoiseSpec`: which label noise a run applies, checked once and parsed from text.

One frozen value per noise setting (kind, rate, class map or transition matrix, CIFAR-N
variant), validated at construction and parsed from the command line's ``"kind:rate"``
form (`NoiseSpec.parse`); `sap_jax.noise.apply_noise` applies it. The kinds and the
CIFAR-N label sets are `NOISE_KINDS` and `HUMAN_VARIANTS`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from sap_jax import noise_checks as checks

__all__ = ["HUMAN_VARIANTS", "NOISE_KINDS", "NoiseSpec"]


NOISE_KINDS = ("none", "symmetric", "asymmetric", "hierarchical", "human")
"""The values `NoiseSpec.kind` may take."""


HUMAN_VARIANTS = ("aggre", "worse", "random1", "random2", "random3", "noisy100")
"""CIFAR-N label sets: CIFAR-10N aggre/worse/random1..3, CIFAR-100N noisy100."""


@dataclasses.dataclass(frozen=True, eq=False)
class NoiseSpec:
  """What label noise to apply; parsed from text for CLIs and configs.

  Text forms (``str(spec)`` gives them back, ``NoiseSpec.parse`` reads them):
  ``"none"``, ``"symmetric:0.25"``, ``"asymmetric:0.1"`` (the data set's known class map),
  ``"asymmetric:0.1:3>5,5>3"`` (an explicit class map), ``"hierarchical:0.25"``,
  ``"human:worse"``. A spec holding a transition matrix has no text form that parses.

  Attributes:
    kind: One of :data:`NOISE_KINDS`.
    rate: Fraction of labels to corrupt, in [0, 1). Must be 0 for "none" and "human",
      and for "asymmetric" with a ``transition`` (the matrix sets the flip probabilities).
    class_map: For "asymmetric": source class -> target class. ``None`` means the data
      set's known map (see :func:`known_class_map`).
    transition: For "asymmetric": row-stochastic C x C matrix, ``T[i, j] = P(noisy=j |
      clean=i)``; exclusive with ``class_map``.
    variant: For "human": which CIFAR-N label set, one of :data:`HUMAN_VARIANTS`.
  """

  kind: str
  rate: float = 0.0
  class_map: Mapping[int, int] | None = None
  transition: np.ndarray | None = None
  variant: str | None = None

  def __post_init__(self):
    if self.kind not in NOISE_KINDS:
      raise ValueError(f"unknown noise kind {self.kind!r}; use one of {', '.join(NOISE_KINDS)}.")
    rate = checks.check_rate(self.rate)
    object.__setattr__(self, "rate", rate)
    if self.kind in ("none", "human") and rate != 0.0:
      raise ValueError(
        f"noise kind {self.kind!r} takes no rate, got rate={rate}; leave rate at 0.0 "
        "(use 'symmetric:<rate>' for random flips)."
      )
    if self.kind != "asymmetric" and (self.class_map is not None or self.transition is not None):
      raise ValueError(
        f"class_map/transition only apply to kind='asymmetric', got kind="
        f"{self.kind!r}; drop them or use kind='asymmetric'."
      )
    if self.class_map is not None and self.transition is not None:
      raise ValueError(
        "give either class_map or transition for asymmetric noise, not both; a class "
        "map with rate r equals a transition matrix with T[s, s] = 1 - r, "
        "T[s, class_map[s]] = r."
      )
    if self.class_map is not None:
      cmap = dict(sorted(checks.check_class_map(self.class_map, None).items()))
      object.__setattr__(self, "class_map", cmap)  # a private copy (dicts pickle)
    if self.transition is not None:
      if rate != 0.0:
        raise ValueError(
          f"rate={rate} given together with a transition matrix; the matrix "
          "already sets the flip probabilities (1 - T[c, c] per class), so leave "
          "rate at 0.0."
        )
      t = checks.check_transition(self.transition, None).copy()
      t.setflags(write=False)
      object.__setattr__(self, "transition", t)
    if self.kind == "human":
      if self.variant not in HUMAN_VARIANTS:
        raise ValueError(
          f"human noise needs variant= one of {', '.join(HUMAN_VARIANTS)}, got "
          f"{self.variant!r}; e.g. NoiseSpec('human', variant='worse') or "
          "'human:worse'."
        )
    elif self.variant is not None:
      raise ValueError(
        f"variant={self.variant!r} only applies to kind='human', got kind="
        f"{self.kind!r}; drop variant."
      )

  @classmethod
  def parse(cls, text: str | NoiseSpec) -> NoiseSpec:
    """Parses ``"kind[:rate|:variant][:src>dst,...]"``; a NoiseSpec passes through.

    Args:
      text: e.g. ``"none"``, ``"symmetric:0.25"``, ``"asymmetric:0.1"``,
        ``"asymmetric:0.2:9>1,2>0"``, ``"hierarchical:0.25"``, ``"human:worse"``.

    Returns:
      The validated NoiseSpec.

    Raises:
      ValueError: if the text is malformed; the message shows the accepted forms.
    """
    if isinstance(text, NoiseSpec):
      return text
    if not isinstance(text, str):
      raise ValueError(
        f"noise spec must be a string such as 'symmetric:0.25', got {type(text).__name__}."
      )
    forms = (
      "'none', 'symmetric:0.25', 'asymmetric:0.1', 'asymmetric:0.1:3>5,5>3', "
      "'hierarchical:0.25', 'human:worse'"
    )
    parts = [p.strip() for p in text.strip().split(":")]
    kind = parts[0].lower()
    if kind not in NOISE_KINDS:
      raise ValueError(
        f"cannot parse noise spec {text!r}: unknown kind {parts[0]!r}; use one of {forms}."
      )
    if kind == "none":
      if len(parts) != 1:
        raise ValueError(f"noise spec 'none' takes no arguments, got {text!r}; write 'none'.")
      return cls("none")
    if kind == "human":
      if len(parts) != 2 or not parts[1]:
        raise ValueError(
          f"cannot parse {text!r}: write 'human:<variant>' with variant one of "
          f"{', '.join(HUMAN_VARIANTS)}, e.g. 'human:worse'."
        )
      return cls("human", variant=parts[1].lower())
    max_parts = 3 if kind == "asymmetric" else 2
    if len(parts) < 2 or len(parts) > max_parts or not parts[1]:
      raise ValueError(
        f"cannot parse noise spec {text!r}: write '{kind}:<rate>' with the rate a "
        f"fraction in [0, 1); accepted forms: {forms}."
      )
    try:
      rate = float(parts[1])
    except ValueError:
      raise ValueError(
        f"cannot parse the rate {parts[1]!r} in {text!r}; write a fraction in [0, 1), "
        f"e.g. '{kind}:0.25'."
      ) from None
    class_map = None
    if len(parts) == 3:
      class_map = {}
      for pair in parts[2].split(","):
        m = re.fullmatch(r"\s*(\d+)\s*>\s*(\d+)\s*", pair)
        if m is None:
          raise ValueError(
            f"cannot parse class-map entry {pair!r} in {text!r}; write "
            "'src>dst' pairs separated by commas, e.g. 'asymmetric:0.2:3>5,5>3'."
          )
        class_map[int(m.group(1))] = int(m.group(2))
    return cls(kind, rate=rate, class_map=class_map)

  def __str__(self) -> str:
    if self.kind == "none":
      return "none"
    if self.kind == "human":
      return f"human:{self.variant}"
    if self.transition is not None:
      c = self.transition.shape[0]
      return f"asymmetric:transition[{c}x{c}]"
    text = f"{self.kind}:{self.rate!r}"
    if self.class_map is not None:
      text += ":" + ",".join(f"{s}>{d}" for s, d in self.class_map.items())
    return text

  def _key(self):
    t = None if self.transition is None else (self.transition.shape, self.transition.tobytes())
    cmap = None if self.class_map is None else tuple(self.class_map.items())
    return (self.kind, self.rate, cmap, t, self.variant)

  def __eq__(self, other):
    if not isinstance(other, NoiseSpec):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self):
    return hash(self._key())
