"""Tests for sap_jax.jsonio: the one JSON encoder, its text, round trips, atomic writes."""

import dataclasses
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import jsonio
from sap_jax.train import TrainConfig


@dataclasses.dataclass(frozen=True)
class Point:
  x: int
  tags: tuple[str, ...] = ()


@pytest.mark.parametrize(
  "value,expected",
  [
    (np.float32(0.5), 0.5),
    (np.int64(12484), 12484),
    (np.bool_(True), True),
    (np.arange(4, dtype=np.int32).reshape(2, 2), [[0, 1], [2, 3]]),
    (np.array(7.0), 7.0),
    (jnp.array([1.5, -2.0]), [1.5, -2.0]),
    (Path("/a/b.json"), "/a/b.json"),
    (Point(3, ("u",)), {"x": 3, "tags": ("u",)}),
    ({3, 1, 2}, [1, 2, 3]),
    (frozenset({"b", "a"}), ["a", "b"]),
  ],
  ids=lambda v: type(v).__name__,
)
def test_json_default_converts_known_types(value, expected):
  got = jsonio.json_default(value)
  assert got == expected and type(got) is type(expected)


def test_unorderable_sets_keep_every_item():
  assert sorted(map(str, jsonio.json_default({1, "a"}))) == ["1", "a"]


def test_unknown_types_raise():
  with pytest.raises(TypeError, match="object is not JSON serialisable"):
    jsonio.json_default(object())
  with pytest.raises(TypeError):
    jsonio.dumps({"fn": print})


def test_dumps_text_is_the_checkpoint_and_record_format():
  doc = {
    "seed": np.int64(3),
    "acc": np.float32(0.25),
    "path": Path("runs/x"),
    "fit": None,
    "nan": float("nan"),
    "a": [1, 2],
  }
  assert jsonio.dumps(doc, sort_keys=True) == (
    '{"a": [1, 2], "acc": 0.25, "fit": null, "nan": NaN, "path": "runs/x", "seed": 3}'
  )
  assert jsonio.dumps({"b": 1, "a": 2}) == '{"b": 1, "a": 2}'  # insertion order by default
  assert jsonio.dumps({"a": [1]}, indent=2) == '{\n  "a": [\n    1\n  ]\n}'


def test_to_jsonable_round_trips_through_json():
  config = TrainConfig(epochs=3, logit_clip=2.0)
  doc = {"config": config, "stats": {"mean": np.array([0.5, 1.0], np.float32)}, "ids": {2, 1}}
  plain = jsonio.to_jsonable(doc)
  assert plain == {"config": config.to_dict(), "stats": {"mean": [0.5, 1.0]}, "ids": [1, 2]}
  assert TrainConfig(**plain["config"]) == config
  assert json.loads(json.dumps(plain)) == plain
  assert math.isnan(jsonio.to_jsonable({"x": np.float64("nan")})["x"])


def test_write_json_atomic_writes_sorted_indented_text(tmp_path):
  path = tmp_path / "deep" / "rec.json"
  assert jsonio.write_json_atomic(path, {"b": np.int32(1), "a": [np.float64(0.5)]}) == path
  assert path.read_text(encoding="utf-8") == '{\n "a": [\n  0.5\n ],\n "b": 1\n}\n'
  jsonio.write_json_atomic(path, {"b": 2, "a": 1}, indent=None, sort_keys=False)
  assert path.read_text(encoding="utf-8") == '{"b": 2, "a": 1}\n'
  assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "b": 2}
  assert os.listdir(path.parent) == ["rec.json"]


def test_write_json_atomic_leaves_the_old_file_on_failure(tmp_path):
  path = tmp_path / "rec.json"
  jsonio.write_json_atomic(path, {"ok": True})
  before = path.read_bytes()
  with pytest.raises(TypeError):
    jsonio.write_json_atomic(path, {"bad": object()})
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["rec.json"]
