"""The paper-scale configs follow the published recipe, and Clothing1M's runs end to end
at toy size: a generated image folder, the torchvision fixtures as "pretrained" weights
(converted on load, the head re-initialised), ImageNet-style augmentation, a 10 % noisy
validation split, then SAP; and every method of the config (the baselines too) over the
streamed folder."""

import dataclasses
import os

import numpy as np
import pytest

from experiments import config as cfg
from experiments import grid, run
from sap_jax import checkpoint
from tests.fake_data import write_image_folder

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def _state_dict_file(name, folder):
  """The fixture's torchvision state dict alone, as a user's ``np.savez`` of it."""
  with np.load(os.path.join(FIXTURES, f"torchvision_{name}.npz")) as f:
    state = {k[len("state/") :]: f[k] for k in f.files if k.startswith("state/")}
  path = folder / f"{name}.npz"
  np.savez(path, **state)
  return str(path)


VIT_SMALL = {"patch_size": 8, "hidden_size": 32, "num_layers": 2, "num_heads": 2, "mlp_dim": 64}


def test_paper_cifar10_is_the_published_recipe():
  config, _ = cfg.load_config("paper_cifar10")
  train = config.train
  assert train["augment"] == "auto" and train["nesterov"] is True
  assert (train["learning_rate"], train["weight_decay"], train["batch_size"]) == (0.05, 5e-4, 128)
  spec = grid.expand(config)[0].spec
  assert spec.train.augment == "auto" and spec.dataset == "cifar10" and spec.val_fraction == 0.1


def test_paper_clothing1m_is_the_published_recipe():
  config, module = cfg.load_config("paper_clothing1m")
  train = config.train
  assert train["augment"] == "imagenet" and train["nesterov"] is True
  assert (train["epochs"], train["batch_size"], train["learning_rate"]) == (10, 512, 1e-2)
  assert train["weight_decay"] == 4e-5 and train["schedule"] == "constant"
  assert [s.init_from for s in config.setups] == [
    module.WEIGHTS["resnet50"],
    module.WEIGHTS["vit_b16"],
  ]
  assert all(s.val_fraction == 0.1 for s in config.setups)
  assert {m.name for m in config.methods} == {"vanilla", "finetune", "ssd", "scrub", "sap"}
  spec = grid.expand(config)[0].spec
  assert spec.init_from == os.path.abspath(module.WEIGHTS["resnet50"])


# Each Clothing1M setup at toy size, with a fixture of the same family as "pretrained"
# weights (the ResNet50 setup with the reduced ResNet18: a ResNet50 compiles for minutes
# on CPU). Vanilla and SAP only: the baselines run on such vanilla models as on any
# other (test_experiments.py).
TOY = {
  "resnet50": ("resnet18", {"stem": "imagenet", "width": 4}, "resnet18_small"),
  "vit_b16": ("vit", VIT_SMALL, "vit_small"),
}


@pytest.mark.parametrize("setup_model", sorted(TOY))
def test_paper_clothing1m_runs_at_toy_size(setup_model, tmp_path):
  config, _ = cfg.load_config("paper_clothing1m")
  (setup,) = [s for s in config.setups if s.model == setup_model]
  model, kwargs, fixture = TOY[setup_model]
  setup = dataclasses.replace(
    setup, model=model, model_kwargs=kwargs, init_from=_state_dict_file(fixture, tmp_path)
  )
  methods = tuple(m for m in config.methods if m.name in ("vanilla", "sap"))
  config = dataclasses.replace(
    config, setups=(setup,), methods=methods, alpha_curve=False, record_spectra=False
  )
  root = write_image_folder(tmp_path / "data", per_class=40, size=40, seed=1)
  config = cfg.apply_overrides(
    config,
    [
      f"setup.data_root={root}",
      "setup.data_options.image_size=32",
      "seeds=[0]",
      "train.epochs=1",
      "train.batch_size=32",
      "method.sap.n_trusted=32",
      "method.sap.alphas=[1e4, 1e6]",
    ],
  )
  summary = run.run_grid(
    config, tmp_path / "work", progress=False, fail_fast=True, echo=lambda s: None
  )
  cells = grid.expand(config)
  assert (summary.ran, summary.trained, summary.remaining) == (2, 1, 0)
  assert [c.method.name for c in cells] == ["vanilla", "sap"]
  records = run.load_records(tmp_path / "work", cells)
  assert records[cells[1].key]["n_train"] == 108  # 120 images, 10 % noisy validation
  _, meta = checkpoint.load_checkpoint(tmp_path / "work" / "checkpoints" / cells[0].vanilla_key)
  assert meta["spec"]["train"]["augment"] == "imagenet" and meta["spec"]["train"]["nesterov"]
  report = meta["pretrained"]
  # the fixture's 10-class head does not fit the folder's 3 classes: re-initialised
  assert sorted(report["reinitialized"]) == ["params/head/bias", "params/head/kernel"]
  assert report["missing"] == [] and report["unexpected"] == [] and report["loaded"]


def test_paper_clothing1m_runs_every_method_over_the_streamed_folder(tmp_path):
  """The runner reads an image folder lazily (sources, never an array of all images):
  the vanilla training, Finetune, SSD, SCRUB and SAP all stream it, at toy budgets."""
  from sap_jax.data.sources import is_source
  from sap_jax.spec import build_splits

  config, _ = cfg.load_config("paper_clothing1m")
  setup = dataclasses.replace(
    config.setups[0], model="mlp", model_kwargs={"depth": 1, "width": 16}, init_from=None
  )
  config = dataclasses.replace(
    config, setups=(setup,), alpha_curve=True, record_spectra=False, plots=()
  )
  root = write_image_folder(tmp_path / "data", per_class=12, size=16, seed=1)
  config = cfg.apply_overrides(
    config,
    [
      f"setup.data_root={root}",
      "setup.data_options.image_size=16",
      "seeds=[0]",
      "train.epochs=1",
      "train.batch_size=8",
      "method.finetune.n_retain=8",
      "method.finetune.epochs=1",
      "method.finetune.batch_size=8",
      'method.finetune.grid={"lr": [0.01]}',
      "method.ssd.n_retain=8",
      "method.ssd.n_forget=4",
      "method.ssd.batch_size=8",
      'method.ssd.grid={"alpha": [1.0]}',
      "method.scrub.n_retain=8",
      "method.scrub.n_forget=4",
      "method.scrub.epochs=1",
      "method.scrub.batch_size=8",
      "method.scrub.forget_batch_size=4",
      'method.scrub.grid={"lr": [5e-4]}',
      "method.sap.n_trusted=8",
      "method.sap.alphas=[1e4]",
    ],
  )
  cells = grid.expand(config)
  assert is_source(build_splits(cells[0].spec, stream=True).x_train)
  summary = run.run_grid(
    config, tmp_path / "work", progress=False, fail_fast=True, echo=lambda s: None
  )
  assert (summary.ran, summary.trained, summary.remaining) == (5, 1, 0)
  records = run.load_records(tmp_path / "work", cells)
  by_method = {records[c.key]["method_name"]: records[c.key] for c in cells}
  assert sorted(by_method) == ["finetune", "sap", "scrub", "ssd", "vanilla"]
  assert by_method["finetune"]["retain_size"] == 8 and by_method["ssd"]["forget_size"] == 4
  assert all(0 <= r["test_accuracy"] <= 1 for r in by_method.values())
  # the α curve scored on the streamed splits: the method's own sweep, exactly
  assert by_method["sap"]["alpha_curve"]["check_max_abs_diff"] == 0.0
