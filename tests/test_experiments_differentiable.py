"""The differentiable-SAP experiment runner (experiments/differentiable.py) on a tiny grid."""

import json
import textwrap

import pytest

from experiments import differentiable

# Precision-at-k averages over an empty set of mislabelled samples on this tiny grid.
pytestmark = pytest.mark.filterwarnings(
  "ignore:Mean of empty slice", "ignore:invalid value encountered"
)

BASE = """
from experiments.config import Config, MethodSpec, Setup, TableSpec


def get_config():
  return Config(
    name="tiny_base",
    setups=(
      Setup(
        dataset="spiral",
        model="mlp",
        model_kwargs={"depth": 2, "width": 32},
        data_options={"n_per_class": 60},
        val_fraction=0.25,
        label="spiral",
      ),
    ),
    noises=("symmetric:0.25",),
    seeds=(0,),
    train={"epochs": 30, "batch_size": 16, "learning_rate": 0.05, "eval_every": 10},
    methods=(MethodSpec("vanilla"),),
    table=TableSpec(),
  )
"""

SETTINGS = """
BASE_CONFIG = {base!r}
N_TRUSTED = 40
TUNE = {{"tuned (CV)": {{"folds": 3, "steps": 4, "learning_rate": 0.1, "penalty": 0.0}}}}
CLEAN_TUNE = "tuned (CV)"
INFLUENCE_K = (2, 5)
DROP_K = (2,)
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp("differentiable")
  base = root / "tiny_base.py"
  base.write_text(textwrap.dedent(BASE))
  settings = root / "settings.py"
  settings.write_text(SETTINGS.format(base=str(base)))
  workdir, ckpt = root / "work", root / "ckpt"
  args = [str(settings), "--workdir", str(workdir), "--checkpoint-dir", str(ckpt)]
  assert differentiable.main(args) == 0
  return args, workdir


def test_one_record_per_vanilla_model_with_every_part(tiny):
  _, workdir = tiny
  (path,) = sorted((workdir / "cells").glob("*.json"))
  rec = json.loads(path.read_text())
  assert {"tuned", "sensitivity", "grid_test", "oracle_test", "vanilla_test"} <= set(rec)
  assert set(rec["tuned"]) == {"tuned (CV)", "tuned on clean val †"}
  for tuned in rec["tuned"].values():  # never worse than its start on held-out folds
    assert tuned["heldout_accuracy"] >= tuned["heldout_accuracy_start"]
    assert set(tuned["alpha"]) == set(rec["layers"]) or len(tuned["alpha"]) == len(rec["layers"])
  assert rec["influence"] and rec["influence_random"]
  assert (workdir / "table.md").read_text().count("tuned (CV)") >= 1


def test_rerun_skips_finished_models_and_rewrites_only_its_own_files(tiny):
  args, workdir = tiny
  (path,) = sorted((workdir / "cells").glob("*.json"))
  before = path.read_bytes()
  assert differentiable.main(args) == 0
  assert path.read_bytes() == before


def test_a_user_file_named_like_an_output_is_refused(tmp_path, tiny):
  args, _ = tiny
  other = tmp_path / "work"
  (other / "cells").mkdir(parents=True)
  (other / "table.md").write_text("my notes")
  (other / "cells" / "x.json").write_text('{"mine": 1}')
  with pytest.raises(FileExistsError, match="holds no differentiable-SAP records"):
    differentiable.main(
      [args[0], "--workdir", str(other), "--checkpoint-dir", args[4], "--only-table"]
    )
  assert (other / "table.md").read_text() == "my notes"
