"""sap_jax.baselines (the package): the method registry and the re-exported grids."""

import pytest

from sap_jax import baselines as bl


def test_registry_names_and_errors():
  assert bl.known_methods() == ("vanilla", "sap", "retrain", "finetune", "ssd", "scrub", "cleaning")
  m = bl.get_method("ssd", n_forget=7)
  assert m.name == "ssd" and m.hparams["n_forget"] == 7
  with pytest.raises(ValueError, match="known methods"):
    bl.get_method("unlearn")
  with pytest.raises(ValueError, match="unknown hyperparameters"):
    bl.get_method("scrub", grid={"beta": (1.0,)})


def test_default_grid_sizes():
  count = lambda d, g: len(bl.expand_grid(d, g))  # noqa: E731
  assert count({"lr": 0, "epochs": 0}, bl.FINETUNE_GRID) == 3
  assert count({"alpha": 0, "lambda_": 0}, bl.SSD_GRID) == 10
  assert bl.SSD_GRID["alpha"][0] == 10.0 and bl.SSD_GRID["lambda_"][0] == 1.0
  hp = dict.fromkeys(["lr", "alpha", "gamma", "temperature", "msteps", "epochs"], 0)
  assert count(hp, bl.SCRUB_GRID) == 8
  assert count(hp, bl.SCRUB_PAPER_SCALE_GRID) == 675
