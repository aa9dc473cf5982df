"""What the package ships and declares (setup.cfg, LICENSE, the Makefile's test targets)."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _metadata() -> configparser.SectionProxy:
  config = configparser.ConfigParser()
  config.read(ROOT / "setup.cfg")
  return config


def test_the_license_file_is_the_apache_license_the_metadata_names():
  config = _metadata()
  assert config["metadata"]["license"] == "Apache-2.0"
  (name,) = config["metadata"]["license_files"].split()
  text = (ROOT / name).read_text()
  assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
  assert "END OF TERMS AND CONDITIONS" in text


def test_the_classifiers_list_every_python_from_the_minimum_to_3_13():
  config = _metadata()
  listed = re.findall(
    r"Programming Language :: Python :: 3\.(\d+)", config["metadata"]["classifiers"]
  )
  minimum = re.fullmatch(r">=3\.(\d+)", config["options"]["python_requires"]).group(1)
  assert [int(v) for v in listed] == list(range(int(minimum), 14))


def test_one_make_target_runs_the_suite_on_the_newest_releases_and_the_readme_names_it():
  makefile = (ROOT / "Makefile").read_text()
  recipe = makefile.split("\ntest-newest:")[1].split("\n\n")[0]
  assert "-c constraints.txt" not in recipe and "--upgrade-strategy eager" in recipe
  assert "-m pytest" in recipe
  assert "`make test-newest`" in (ROOT / "README.md").read_text()
