"""Tests for sap_jax.jsonio: the one JSON encoder, its text, round trips, atomic writes."""

import dataclasses
import json
import math
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from sap_jax import jsonio, safe_write
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


ANY_JSON = safe_write.Kind("test record", lambda p: jsonio.json_object(p) is not None)


def test_write_json_writes_sorted_indented_text(tmp_path):
  path = tmp_path / "deep" / "rec.json"
  assert jsonio.write_json(path, {"b": np.int32(1), "a": [np.float64(0.5)]}, ANY_JSON) == path
  assert path.read_text(encoding="utf-8") == '{\n "a": [\n  0.5\n ],\n "b": 1\n}\n'
  jsonio.write_json(path, {"b": 2, "a": 1}, ANY_JSON, overwrite=True, indent=None, sort_keys=False)
  assert path.read_text(encoding="utf-8") == '{"b": 2, "a": 1}\n'
  assert json.loads(path.read_text(encoding="utf-8")) == {"a": 1, "b": 2}
  assert os.listdir(path.parent) == ["rec.json"]


def test_write_json_leaves_the_old_file_on_failure(tmp_path):
  path = tmp_path / "rec.json"
  jsonio.write_json(path, {"ok": True}, ANY_JSON)
  before = path.read_bytes()
  with pytest.raises(TypeError):
    jsonio.write_json(path, {"bad": object()}, ANY_JSON, overwrite=True)
  with pytest.raises(FileExistsError, match="already exists .*pass --overwrite"):
    jsonio.write_json(path, {"new": 1}, ANY_JSON)
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["rec.json"]


def test_reports_carry_their_format_tag_and_replace_only_reports(tmp_path):
  path = tmp_path / "report.json"
  jsonio.write_report(path, {"alpha": 3.0})
  assert json.loads(path.read_text()) == {"format": jsonio.REPORT_FORMAT, "alpha": 3.0}
  assert path.read_text().startswith('{\n  "format": "sap_jax.report"')
  assert jsonio.is_report(path)
  jsonio.write_report(path, {"alpha": 4.0}, overwrite=True)
  assert json.loads(path.read_text())["alpha"] == 4.0
  # JSON that is not a report, and text that is not JSON, are never replaced
  for name, text in {"other.json": '{"alpha": 1}', "notes.txt": "my notes"}.items():
    (tmp_path / name).write_text(text)
    assert not jsonio.is_report(tmp_path / name)
    with pytest.raises(FileExistsError, match="not a sap_jax report"):
      jsonio.write_report(tmp_path / name, {"alpha": 5.0}, overwrite=True)
    assert (tmp_path / name).read_text() == text


def test_json_object(tmp_path):
  (tmp_path / "a.json").write_text('{"x": 1}')
  (tmp_path / "list.json").write_text("[1]")
  (tmp_path / "bin").write_bytes(b"\xff\x00")
  assert jsonio.json_object(tmp_path / "a.json") == {"x": 1}
  for name in ("list.json", "bin", "missing"):
    assert jsonio.json_object(tmp_path / name) is None
  assert jsonio.json_object(tmp_path) is None
