"""``sap-jax train --augment --init-from``: augmentation and pretrained weights on the
command line, with the report printed and recorded in the checkpoint."""

import json

import pytest

from sap_jax import checkpoint, cli
from tests.fake_data import write_image_folder

TRAIN = (
  *("train", "--dataset", "folder", "--model", "cnn", "--epochs", "1", "--batch-size", "16"),
  *("--data-opt", "image_size=12", "--noise", "symmetric:0.25", "--seed", "2", "--quiet"),
)


def _main(*args):
  return cli.main(["--compilation-cache", "off", *map(str, args)])


@pytest.fixture(scope="module")
def work(tmp_path_factory):
  work = tmp_path_factory.mktemp("cli_recipe")
  root = write_image_folder(work / "data", per_class=16, size=16, seed=4)
  assert _main(*TRAIN, "--data-root", root, "--out", work / "plain") == 0
  return work, root


def test_train_augmented_from_a_checkpoint_records_the_report(work, capsys):
  work, root = work
  capsys.readouterr()
  out = work / "warm"
  code = _main(
    *TRAIN, "--data-root", root, "--out", out, "--augment", "cifar", "--init-from", work / "plain"
  )
  printed = capsys.readouterr().out
  assert code == 0
  _, meta = checkpoint.load_checkpoint(out)
  report = meta["pretrained"]
  assert report["source"] == str(work / "plain") and report["reinitialized"] == []
  assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) > 0
  assert f"loaded: {len(report['loaded'])}" in printed and "initialised from" in printed
  assert meta["spec"]["train"]["augment"] == "cifar"
  assert meta["spec"]["init_from"] == str(work / "plain")
  _, plain = checkpoint.load_checkpoint(work / "plain")
  assert "augment" not in plain["spec"]["train"] and "init_from" not in plain["spec"]
  assert "pretrained" not in plain
  json.dumps(meta)


def test_a_pretrained_file_of_another_width_is_refused_before_writing(work, capsys):
  work, root = work
  out = work / "refused"
  code = _main(
    *TRAIN, "--data-root", root, "--out", out, "--model-kw", "width=8", "--init-from",
    work / "plain",
  )  # fmt: skip
  err = capsys.readouterr().err
  assert code != 0 and "model (" in err and "pretrained (" in err, err
  assert len(err.strip().splitlines()) == 1
  assert not out.exists()


def test_unknown_augmentation_is_refused(work, capsys):
  work, root = work
  with pytest.raises(SystemExit):
    _main(*TRAIN, "--data-root", root, "--out", work / "x", "--augment", "autoaugment")
  assert "invalid choice" in capsys.readouterr().err
