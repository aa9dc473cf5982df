"""The experiment runner: grid, keys, resume, tables, configs, paper scale at toy size."""

import dataclasses
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from experiments import config as cfg
from experiments import grid, run, tables
from experiments.config import Config, MethodSpec, Setup, TableSpec

CONFIG_FILES = sorted(p for p in cfg.CONFIG_DIR.glob("*.py") if p.stem != "__init__")
# experiments/configs/differentiable.py holds the settings of its own runner
# (experiments/differentiable.py, tested in tests/test_experiments_differentiable.py).
OWN_RUNNER = {"differentiable": "python -m experiments.differentiable"}
RUNNER_CONFIGS = [p for p in CONFIG_FILES if p.stem not in OWN_RUNNER]


@pytest.mark.parametrize("stem", sorted(OWN_RUNNER))
def test_settings_of_other_runners_document_their_command(stem):
  doc = (cfg.CONFIG_DIR / f"{stem}.py").read_text()
  assert f"{OWN_RUNNER[stem]} experiments/configs/{stem}.py" in doc
  assert "def get_config" not in doc


def _tiny_config(**overrides) -> Config:
  """Two spirals, a 1-layer MLP, 2 epochs: seconds per cell."""
  base = Config(
    name="tiny",
    setups=(
      Setup(
        dataset="spiral",
        model="mlp",
        model_kwargs={"depth": 1, "width": 16},
        data_options={"n_per_class": 40},
        val_fraction=0.25,
        label="spiral",
      ),
    ),
    noises=("symmetric:0.2",),
    seeds=(0,),
    train={"epochs": 2, "batch_size": 16, "learning_rate": 0.05, "eval_every": 10},
    methods=(MethodSpec("vanilla"), MethodSpec("sap", {"n_trusted": 10, "alphas": [1e2, 1e4]})),
    table=TableSpec(),
  )
  return dataclasses.replace(base, **overrides)


# ---------------------------------------------------------------------------
# Grid and keys.
# ---------------------------------------------------------------------------


def test_table1_grid_expands_to_every_cell_in_order():
  config, _ = cfg.load_config("table1")
  cells = grid.expand(config)
  n_methods = len(config.methods)
  assert len(cells) == 2 * 4 * 3 * n_methods  # setups × noises × seeds × methods
  assert len({c.key for c in cells}) == len(cells)
  groups = list(grid.groups(cells))
  assert len(groups) == 2 * 4 * 3  # one vanilla model per (setup, noise, seed)
  assert all(len(g) == n_methods for _, g in groups)
  assert [c.method.name for c in groups[0][1]] == [m.name for m in config.methods]
  first = cells[0]
  assert (first.setup.dataset, first.noise, first.seed) == ("digits", "symmetric:0.1", 12484)
  assert first.spec.train.epochs == 80 and first.spec.train.seed == 12484
  assert {c.noise for c in cells} == set(config.noises)
  assert {c.seed for c in cells} == {12484, 32087, 35416}


def test_ablations_reuse_table1_checkpoints():
  t1 = {c.vanilla_key for c in grid.expand(cfg.load_config("table1")[0])}
  ab = {c.vanilla_key for c in grid.expand(cfg.load_config("ablations")[0])}
  assert ab <= t1


def test_keys_are_stable_and_ignore_labels_and_data_root():
  config = _tiny_config()
  keys = [c.key for c in grid.expand(config)]
  assert keys == [c.key for c in grid.expand(_tiny_config())]
  relabelled = _tiny_config(
    methods=(
      MethodSpec("vanilla", label="Noisy"),
      MethodSpec("sap", {"n_trusted": 10, "alphas": [1e2, 1e4]}, label="Ours"),
    )
  )
  assert [c.key for c in grid.expand(relabelled)] == keys
  moved = _tiny_config(setups=(dataclasses.replace(config.setups[0], data_root="/elsewhere"),))
  assert [c.key for c in grid.expand(moved)] == keys
  other = _tiny_config(methods=(MethodSpec("sap", {"n_trusted": 11, "alphas": [1e2, 1e4]}),))
  assert grid.expand(other)[0].key not in keys
  longer = _tiny_config(train={**config.train, "epochs": 3})
  assert not {c.vanilla_key for c in grid.expand(longer)} & {
    c.vanilla_key for c in grid.expand(config)
  }
  with pytest.raises(ValueError, match="identical"):
    grid.expand(_tiny_config(methods=(MethodSpec("vanilla"), MethodSpec("vanilla", label="x"))))


def test_overrides():
  config = cfg.apply_overrides(
    _tiny_config(),
    [
      "seeds=[7]",
      "train.epochs=1",
      "setup.data_root=/data",
      "setup.data_options.noise=0.5",
      "method.sap.n_trusted=5",
      'noises=["asymmetric:0.1"]',
    ],
  )
  assert config.seeds == (7,) and config.train["epochs"] == 1
  assert config.noises == ("asymmetric:0.1",)
  assert config.setups[0].data_root == "/data"
  assert config.setups[0].data_options == {"n_per_class": 40, "noise": 0.5}
  assert config.methods[1].kwargs["n_trusted"] == 5
  for bad in ("nokey", "method.nope.x=1", "setup.nope=1", "wat.x.y=1"):
    with pytest.raises(ValueError):
      cfg.apply_overrides(_tiny_config(), [bad])


# ---------------------------------------------------------------------------
# Running, resuming, refusing.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """Runs the tiny grid once, counting trainings; returns (config, workdir, ckpt, counter)."""
  from sap_jax import train

  root = tmp_path_factory.mktemp("runner")
  workdir, ckpt = root / "work", root / "ckpt"
  counter = {"train": 0}
  original = train.train_model

  def counting(*args, **kwargs):
    counter["train"] += 1
    return original(*args, **kwargs)

  mp = pytest.MonkeyPatch()
  mp.setattr(train, "train_model", counting)
  config = _tiny_config()
  summary = run.run_grid(
    config, workdir, checkpoint_dir=ckpt, progress=False, fail_fast=True, echo=lambda s: None
  )
  yield config, workdir, ckpt, counter, summary
  mp.undo()


def test_run_writes_one_record_per_cell(tiny_run):
  config, workdir, ckpt, counter, summary = tiny_run
  cells = grid.expand(config)
  assert (summary.ran, summary.trained, summary.remaining, summary.failed) == (2, 1, 0, [])
  assert counter["train"] == 1  # one vanilla model, shared by both methods
  assert sorted(p.stem for p in (workdir / "cells").glob("*.json")) == sorted(c.key for c in cells)
  assert sorted(p.name for p in ckpt.iterdir()) == sorted({c.vanilla_key for c in cells})
  records = run.load_records(workdir, cells)
  for cell in cells:
    rec = records[cell.key]
    assert rec["config_name"] == "tiny" and rec["seed"] == cell.seed
    for key in ("test_accuracy", "val_accuracy_noisy", "val_accuracy_clean", "wall_time_s"):
      assert 0.0 <= rec[key] <= 1.0 or key == "wall_time_s"
    assert 0.0 <= rec["vanilla"]["fit_noisy"] <= 1.0
    if cell.method.name == "vanilla":
      assert rec["test_accuracy"] == rec["vanilla"]["test_accuracy"]
      assert rec["num_settings"] == 0
    else:
      assert rec["num_settings"] == 2 and rec["trusted_size"] == 10
      assert 0.0 <= rec["trusted_noise_rate"] <= 1.0
      assert "alpha_oracle" in rec and "test_accuracy_oracle_alpha" in rec
      curve = rec["alpha_curve"]
      assert curve["alphas"] == [1e2, 1e4] and len(curve["val_clean"]) == 2
      # The runner's α curve reproduces the method's own noisy-validation sweep.
      assert curve["check_max_abs_diff"] == 0.0
      # The test accuracy of the returned model is the curve's at the chosen α.
      expected = (
        curve["baseline"]["test"]
        if rec["alpha"] is None
        else curve["test"][curve["alphas"].index(rec["alpha"])]
      )
      assert rec["test_accuracy"] == pytest.approx(expected, abs=1e-6)


def test_rerun_skips_finished_cells_and_reuses_checkpoints(tiny_run):
  config, workdir, ckpt, counter, _ = tiny_run
  before = counter["train"]
  mtimes = {p: p.stat().st_mtime_ns for p in (workdir / "cells").glob("*.json")}
  again = run.run_grid(
    config, workdir, checkpoint_dir=ckpt, progress=False, fail_fast=True, echo=lambda s: None
  )
  assert (again.ran, again.already_done, again.trained) == (0, 2, 0)
  assert counter["train"] == before
  assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # records never rewritten
  # An interrupted grid: one record missing → only that cell runs, from the checkpoint.
  sap_cell = [c for c in grid.expand(config) if c.method.name == "sap"][0]
  run.record_path(workdir, sap_cell.key).unlink()
  resumed = run.run_grid(
    config,
    workdir,
    checkpoint_dir=ckpt,
    progress=False,
    fail_fast=True,
    echo=lambda s: None,
    max_cells=5,
  )
  assert (resumed.ran, resumed.trained, resumed.remaining) == (1, 0, 0)
  assert counter["train"] == before


def test_shards_split_the_grid_by_vanilla_model(tiny_run):
  config, workdir, ckpt, counter, _ = tiny_run
  before = counter["train"]
  kw = dict(checkpoint_dir=ckpt, progress=False, fail_fast=True, echo=lambda s: None)
  first = run.run_grid(config, workdir, shard=(0, 2), **kw)  # the grid's one vanilla model
  second = run.run_grid(config, workdir, shard=(1, 2), **kw)
  assert (first.total, first.already_done, first.ran) == (2, 2, 0)
  assert (second.total, second.already_done, second.ran) == (0, 0, 0)
  assert counter["train"] == before
  with pytest.raises(ValueError, match="shard 2/2"):
    run.run_grid(config, workdir, shard=(2, 2), **kw)
  assert run.build_parser().parse_args(["table1", "--shard", "1/3"]).shard == (1, 3)


def test_max_cells_and_cli_only_table(tiny_run, tmp_path):
  config, workdir, ckpt, _, _ = tiny_run
  partial = run.run_grid(
    config, tmp_path / "w", checkpoint_dir=ckpt, progress=False, max_cells=1, echo=lambda s: None
  )
  assert (partial.ran, partial.remaining, partial.trained) == (1, 1, 0)
  written = run.write_outputs(config, workdir, checkpoint_dir=ckpt, echo=lambda s: None)
  names = {p.name for p in written}
  assert {"table.md", "table.csv", "cells.csv"} <= names
  md = (workdir / "table.md").read_text()
  assert "| SAP (oracle α) † |" in md and "spiral Sym-20%" in md


def test_incompatible_workdir_is_refused(tiny_run, tmp_path, capsys):
  config, workdir, ckpt, _, _ = tiny_run
  bumped = dataclasses.replace(config, version=2)
  with pytest.raises(run.IncompatibleWorkdir, match="version 1"):
    run.run_grid(bumped, workdir, checkpoint_dir=ckpt, progress=False)
  renamed = dataclasses.replace(config, name="other")
  with pytest.raises(run.IncompatibleWorkdir, match="'tiny'"):
    run.check_workdir(renamed, workdir, write=False)
  # The command line says so and exits with status 2.
  assert run.main(["table1", "--workdir", str(workdir), "--only-table"]) == 2
  assert "holds records of config 'tiny'" in capsys.readouterr().err


def test_a_user_folder_is_not_a_workdir(tmp_path):
  (tmp_path / "table.md").write_text("my own table")
  with pytest.raises(run.IncompatibleWorkdir, match="not an experiment workdir: it holds table.md"):
    run.check_workdir(_tiny_config(), tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["table.md"]
  assert (tmp_path / "table.md").read_text() == "my own table"


def test_records_are_written_in_the_committed_format(tiny_run):
  """Indent 1, sorted keys, a final newline: the committed records re-encode byte for byte."""
  from sap_jax import jsonio

  _, workdir, _, _, _ = tiny_run
  committed = sorted(run.RESULTS_DIR.glob("*/cells/*.json"))[:50]
  for path in [*sorted((workdir / "cells").glob("*.json")), *committed]:
    text = path.read_text(encoding="utf-8")
    assert jsonio.dumps(json.loads(text), indent=1, sort_keys=True) + "\n" == text, path
  meta = json.loads((workdir / "config.json").read_text(encoding="utf-8"))
  assert meta["config"] == cfg.to_dict(_tiny_config())


# ---------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------


def _record(cell, acc, oracle=None):
  rec = {
    "test_accuracy": acc,
    "seed": cell.seed,
    "vanilla_key": cell.vanilla_key,
    "noise_rate_observed": 0.2,
    "num_settings": 1,
    "wall_time_s": 1.0,
    "vanilla": {"fit_noisy": 1.0, "test_accuracy": 0.5, "train_time_s": 3.0},
    "method_name": cell.method.name,
    "chosen": {},
  }
  if oracle is not None:
    rec.update(
      test_accuracy_oracle_alpha=oracle,
      alpha=100.0,
      alpha_oracle=1000.0,
      trusted_size=10,
      trusted_noise_rate=0.0,
    )
  return rec


def test_table_mean_std_and_bold_best():
  config = _tiny_config(
    setups=(Setup("spiral", "mlp", label="A"), Setup("digits", "mlp", label="B")),
    seeds=(0, 1, 2),
    methods=(
      MethodSpec("vanilla"),
      MethodSpec("retrain"),
      MethodSpec("finetune"),
      MethodSpec("sap"),
    ),
  )
  cells = grid.expand(config)
  acc = {  # per (setup label, method): accuracies of seeds 0, 1, 2
    ("A", "vanilla"): (0.80, 0.82, 0.84),
    ("A", "retrain"): (0.99, 0.99, 0.99),
    ("A", "finetune"): (0.85, 0.86, 0.87),
    ("A", "sap"): (0.90, 0.91, 0.92),
    ("B", "vanilla"): (0.70, 0.70, 0.70),
    ("B", "retrain"): (0.95, 0.95, 0.95),
    ("B", "finetune"): (0.75, 0.76, 0.77),
    ("B", "sap"): (0.74, 0.76, 0.78),
  }
  records = {}
  for c in cells:
    a = acc[(c.setup.label, c.method.name)][c.seed]
    records[c.key] = _record(c, a, oracle=0.95 if c.method.name == "sap" else None)
  table = tables.build_table(config, cells, records)
  assert table.rows == ["Vanilla", "Retrain", "Finetune", "SAP", "SAP (oracle α)"]
  assert table.columns == ["A Sym-20%", "B Sym-20%"]
  mean, std, n = table.stats("SAP", "A Sym-20%")
  assert (mean, n) == (pytest.approx(91.0), 3) and std == pytest.approx(1.0)  # ddof = 1
  md = tables.to_markdown(table)
  lines = {line.split(" |")[0].lstrip("| "): line for line in md.splitlines()[2:]}
  assert "| **91.00 ± 1.00** |" in lines["SAP"]  # best correction in column A
  assert "| **76.00 ± 1.00** |" in lines["Finetune"] and "| **76.00 ± 2.00** |" in lines["SAP"]
  assert "**" not in lines["Retrain †"] and "**" not in lines["SAP (oracle α) †"]
  assert lines["Vanilla"].startswith("| Vanilla | 82.00 ± 2.00 | 70.00 ± 0.00 | 76.00 |")
  assert lines["SAP"].rstrip().endswith("| **83.50** |")  # average column: (91 + 76) / 2
  # A missing cell shows a dash and leaves the row out of the average.
  del records[cells[3].key], records[cells[3 + 4].key], records[cells[3 + 8].key]
  md = tables.to_markdown(tables.build_table(config, cells, records))
  sap_line = [line for line in md.splitlines() if line.startswith("| SAP |")][0]
  assert sap_line.startswith("| SAP | – |") and sap_line.rstrip().endswith("| – |")


def test_table2_layout_with_paired_gain_column():
  from experiments.config import Variant

  config = _tiny_config(
    seeds=(0, 1),
    variants=(Variant("ERM"), Variant("MixUp", {"mixup_alpha": 0.2})),
    methods=(MethodSpec("vanilla"), MethodSpec("sap")),
    table=TableSpec(
      rows=("variant",),
      columns=("setup", "method"),
      reference_rows=(),
      oracle_rows=False,
      average=False,
      delta=("Vanilla", "SAP"),
    ),
  )
  cells = grid.expand(config)
  acc = {
    ("ERM", "vanilla"): (0.70, 0.80),
    ("ERM", "sap"): (0.75, 0.87),
    ("MixUp", "vanilla"): (0.80, 0.80),
    ("MixUp", "sap"): (0.81, 0.83),
  }
  records = {c.key: _record(c, acc[(c.variant.label, c.method.name)][c.seed]) for c in cells}
  table = tables.build_table(config, cells, records)
  assert table.rows == ["ERM", "MixUp"]
  assert table.columns == ["spiral Vanilla", "spiral SAP", "spiral Δ"]
  mean, std, _ = table.stats("ERM", "spiral Δ")  # gains 5 and 7, paired by seed
  assert mean == pytest.approx(6.0) and std == pytest.approx(np.sqrt(2.0))
  md = tables.to_markdown(table)
  assert "| ERM | 75.00 ± 7.07 | 81.00 ± 8.49 | **+6.00 ± 1.41** |" in md


def test_fmt_mean_std():
  assert tables.fmt_mean_std(*tables.mean_std([85.0])) == "85.00"
  assert tables.fmt_mean_std(*tables.mean_std([1.0, 2.0, 3.0])) == "2.00 ± 1.00"


# ---------------------------------------------------------------------------
# Config files.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", RUNNER_CONFIGS, ids=lambda p: p.stem)
def test_every_config_loads_and_documents_its_command(path):
  config, module = cfg.load_config(str(path))
  assert isinstance(config, Config) and config.name == path.stem
  doc = module.__doc__ or ""
  assert f"python -m experiments.run experiments/configs/{path.stem}.py" in doc
  cells = grid.expand(config)  # builds every RunSpec: data set, model, TrainConfig valid
  assert cells and len({c.key for c in cells}) == len(cells)
  from sap_jax import baselines

  for m in config.methods:
    assert m.name in baselines.known_methods()
    baselines.get_method(m.name, **dict(m.kwargs))  # the kwargs are accepted
  json.dumps(cfg.to_dict(config))


def test_load_config_errors(tmp_path):
  with pytest.raises(ValueError, match="table1"):
    cfg.load_config("no_such_config")
  bad = tmp_path / "bad.py"
  bad.write_text("X = 1\n")
  with pytest.raises(ValueError, match="get_config"):
    cfg.load_config(str(bad))


# ---------------------------------------------------------------------------
# Paper scale at toy size on fake CIFAR-10 files.
# ---------------------------------------------------------------------------


def _write_fake_cifar10(root: Path, per_batch: int = 8, seed: int = 0) -> None:
  rng = np.random.default_rng(seed)

  def batch(n):
    images = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    return {b"data": images, b"labels": [int(v) for v in rng.integers(0, 10, n)]}

  members = {f"data_batch_{i}": batch(per_batch) for i in range(1, 6)}
  members["test_batch"] = batch(per_batch)
  members["batches.meta"] = {b"label_names": [f"c{i}".encode() for i in range(10)]}
  with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
    for name, obj in members.items():
      payload = pickle.dumps(obj, protocol=2)
      info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))


def test_paper_cifar10_config_runs_at_toy_size(tmp_path):
  _write_fake_cifar10(tmp_path)
  config, _ = cfg.load_config("paper_cifar10")
  sap = [m for m in config.methods if m.name == "sap"][0]
  assert sap.kwargs["alphas"] == (1e4, 3e4, 1e5, 3e5, 1e6) and sap.kwargs["n_trusted"] == 1000
  assert config.train["epochs"] == 350
  # Toy size: VGG11-BN at 1/16 width, one training step, vanilla + SAP only
  # (without the oracle/α-curve extras, tested above, to keep compilation short;
  # validation and test sets of one size share their compiled forward pass).
  config = dataclasses.replace(
    config,
    setups=config.setups[:1],
    methods=(config.methods[0], sap),
    oracle=False,
    alpha_curve=False,
    record_spectra=False,
  )
  config = cfg.apply_overrides(
    config,
    [
      f"setup.data_root={tmp_path}",
      "setup.model_kwargs.width_multiplier=0.0625",
      "setup.val_fraction=0.2",
      "seeds=[0]",
      'noises=["symmetric:0.25"]',
      "train.epochs=1",
      "train.batch_size=32",
    ],
  )
  summary = run.run_grid(
    config, tmp_path / "work", progress=False, fail_fast=True, echo=lambda s: None
  )
  assert (summary.ran, summary.trained, summary.remaining) == (2, 1, 0)
  cells = grid.expand(config)
  records = run.load_records(tmp_path / "work", cells)
  sap_rec = records[cells[1].key]
  assert sap_rec["n_train"] == 32 and sap_rec["trusted_size"] == 16  # clipped to N // 2
  assert [s["alpha"] for s in sap_rec["details"]["settings"]] == [1e4, 3e4, 1e5, 3e5, 1e6]
  assert "head" in sap_rec["details"]["layers"] and len(sap_rec["details"]["layers"]) == 9
  assert (tmp_path / "work" / "checkpoints" / cells[0].vanilla_key / "metadata.json").is_file()


def test_table1_has_the_clean_trusted_set_reference_row_and_ablations_the_rounds():
  from sap_jax import baselines as bl

  config, _ = cfg.load_config("table1")
  oracle = [m for m in config.methods if m.kwargs.get("trusted_labels") == "clean"]
  assert len(oracle) == 1 and oracle[0].display == "SAP, clean trusted set"
  assert oracle[0].kwargs["score"] == "curvature_published"
  assert "SAP, clean trusted set" in config.table.reference_rows  # shown with †, never bold
  assert "SAP, clean trusted set (oracle α)" in config.table.reference_rows
  # The honest SAP cell keys are unchanged (the new options add no default hparams).
  honest = [m for m in config.methods if m.name == "sap" and m not in oracle]
  assert [grid.method_key(m) for m in honest] == ["sap-4c43898d"]
  assert set(bl.get_method("sap").hparams) >= {"n_trusted", "alphas"}
  assert "rounds" not in bl.get_method("sap").hparams
  ab, _ = cfg.load_config("ablations")
  rounds = sorted(m.kwargs.get("rounds", 1) for m in ab.methods if m.name == "sap")
  assert rounds.count(2) == 1 and rounds.count(3) == 1
