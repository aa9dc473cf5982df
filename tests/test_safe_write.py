"""Tests for sap_jax.safe_write: the one overwrite rule, atomic swaps, stale temporaries."""

import os
from pathlib import Path

import pytest

from sap_jax import safe_write
from sap_jax.safe_write import Kind, RefusedWrite

DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: never a live process


def _is_ours(path: Path) -> bool:
  if path.is_dir():
    return (path / "TAG").is_file()
  return path.is_file() and path.read_bytes().startswith(b"OURS")


OURS = Kind("test document", _is_ours)


def _tree(root: Path) -> dict[str, bytes | None]:
  return {
    str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
    for p in sorted(root.rglob("*"))
  }


def _fill(text: str):
  def fill(tmp: Path) -> None:
    (tmp / "TAG").write_text("tag")
    (tmp / "content").write_text(text)

  return fill


def test_write_file_creates_then_refuses_without_overwrite(tmp_path):
  path = tmp_path / "deep" / "doc.txt"
  assert safe_write.write_file(path, "OURS 1", OURS) == path
  assert path.read_text() == "OURS 1"
  with pytest.raises(RefusedWrite, match=r"already exists \(a test document\); pass --overwrite"):
    safe_write.write_file(path, "OURS 2", OURS)
  assert path.read_text() == "OURS 1"
  safe_write.write_file(path, b"OURS 3", OURS, overwrite=True)
  assert path.read_bytes() == b"OURS 3"
  assert os.listdir(path.parent) == ["doc.txt"]  # no temporary left


def test_overwrite_replaces_only_its_own_kind(tmp_path):
  user_file = tmp_path / "notes.txt"
  user_file.write_text("my notes")
  folder = tmp_path / "folder"
  folder.mkdir()
  (folder / "a.txt").write_text("a")
  (folder / "b.txt").write_text("b")
  before = _tree(tmp_path)
  with pytest.raises(RefusedWrite, match=r"it is a file of 8 bytes, not a test document"):
    safe_write.write_file(user_file, "OURS", OURS, overwrite=True)
  with pytest.raises(RefusedWrite, match=r"a folder with 2 entries \(a.txt, b.txt\)"):
    safe_write.write_dir(folder, _fill("x"), OURS, overwrite=True)
  with pytest.raises(RefusedWrite, match="not a test document"):
    safe_write.write_file(folder, "OURS", OURS, overwrite=True)
  assert _tree(tmp_path) == before


def test_write_dir_swaps_a_folder_of_its_kind(tmp_path):
  path = tmp_path / "ckpt"
  safe_write.write_dir(path, _fill("one"), OURS)
  assert (path / "content").read_text() == "one"
  safe_write.write_dir(path, _fill("two"), OURS, overwrite=True)
  assert (path / "content").read_text() == "two"
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failing_fill_leaves_everything_as_it_was(tmp_path, error):
  path = tmp_path / "ckpt"
  safe_write.write_dir(path, _fill("one"), OURS)
  before = _tree(tmp_path)

  def fill(tmp: Path) -> None:
    (tmp / "half").write_text("half written")
    raise error("stop")

  with pytest.raises(error):
    safe_write.write_dir(path, fill, OURS, overwrite=True)
  with pytest.raises(error):
    safe_write.write_dir(tmp_path / "new", fill, OURS)
  assert _tree(tmp_path) == before


def test_protected_paths_are_never_written_into_or_over(tmp_path):
  source = tmp_path / "input"
  safe_write.write_dir(source, _fill("in"), OURS)
  link = tmp_path / "link"
  link.symlink_to(source)
  before = _tree(tmp_path)
  cases = {
    source: "it is the input",
    source / "content": "it lies inside the input",
    source / "new" / "x": "it lies inside the input",
    link / "content": "it lies inside the input",  # the same place through a symlink
    tmp_path: "it contains the input",
    link: "it is the input",
  }
  for target, match in cases.items():
    with pytest.raises(RefusedWrite, match=match):
      safe_write.check_target(target, OURS, overwrite=True, protect=[source])
    with pytest.raises(RefusedWrite, match=match):
      safe_write.write_file(target, "OURS", OURS, overwrite=True, protect=[link])
  assert _tree(tmp_path) == before
  # a path beside the input is fine
  safe_write.write_file(tmp_path / "beside", "OURS", OURS, protect=[source])


def test_a_symlink_target_is_refused(tmp_path):
  (tmp_path / "real").write_text("OURS")
  (tmp_path / "link").symlink_to(tmp_path / "real")
  with pytest.raises(RefusedWrite, match="a symbolic link to .*real; pass the real path"):
    safe_write.write_file(tmp_path / "link", "OURS new", OURS, overwrite=True)
  assert (tmp_path / "real").read_text() == "OURS"


def test_check_targets_refuses_overlapping_outputs(tmp_path):
  out = tmp_path / "out"
  with pytest.raises(RefusedWrite, match="checkpoint path .*out contains the report path"):
    safe_write.check_targets(
      [(out, OURS, "checkpoint"), (out / "r.json", OURS, "report")], overwrite=False
    )
  with pytest.raises(RefusedWrite, match="is the report path"):
    safe_write.check_targets([(out, OURS, "checkpoint"), (out, OURS, "report")], overwrite=False)
  paths = safe_write.check_targets(
    [(out, OURS, "checkpoint"), (tmp_path / "r.json", OURS, "report")], overwrite=False
  )
  assert paths == [out, tmp_path / "r.json"] and os.listdir(tmp_path) == []


def test_a_file_where_a_folder_is_needed_is_refused(tmp_path):
  (tmp_path / "file").write_text("x")
  with pytest.raises(RefusedWrite, match=r"file is a file of 1 byte, not a folder"):
    safe_write.check_target(tmp_path / "file" / "sub" / "out", OURS, overwrite=False)


def test_stale_temporaries_are_cleaned_at_the_next_write(tmp_path):
  path = tmp_path / "ckpt"
  stale = tmp_path / f".ckpt.sap_jax-tmp-{DEAD_PID}-0123abcd"
  stale.mkdir()
  (stale / "partial").write_text("half")
  stale_file = tmp_path / f".ckpt.sap_jax-tmp-{DEAD_PID}-89abcdef"
  stale_file.write_text("half")
  live = tmp_path / f".ckpt.sap_jax-tmp-{os.getpid()}-00000000"  # a live process's
  live.mkdir()
  other = tmp_path / f".other.sap_jax-tmp-{DEAD_PID}-0123abcd"  # another target's
  other.mkdir()
  lookalike = tmp_path / ".ckpt.tmp-0123abcd"  # not our pattern
  lookalike.mkdir()
  assert sorted(safe_write.interrupted_saves(path)) == sorted([stale, stale_file])
  safe_write.write_dir(path, _fill("new"), OURS)
  assert sorted(os.listdir(tmp_path)) == sorted(["ckpt", live.name, other.name, lookalike.name])


def test_an_old_folder_left_between_the_two_renames_counts_as_the_target(tmp_path):
  path = tmp_path / "ckpt"
  aside = tmp_path / f".ckpt.sap_jax-old-{DEAD_PID}-0123abcd"
  aside.mkdir()
  (aside / "TAG").write_text("tag")
  (aside / "content").write_text("old")
  before = _tree(tmp_path)
  # without overwrite it is refused as if it had never moved, and nothing is touched
  with pytest.raises(RefusedWrite, match="already exists .*left aside as .*by an interrupted"):
    safe_write.check_target(path, OURS, overwrite=False)
  with pytest.raises(RefusedWrite, match="already exists"):
    safe_write.write_dir(path, _fill("new"), OURS)
  assert _tree(tmp_path) == before
  # with overwrite it is put back, then replaced like any folder of its kind
  safe_write.write_dir(path, _fill("new"), OURS, overwrite=True)
  assert (path / "content").read_text() == "new"
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_clean_stale_restores_an_old_folder_when_the_target_is_missing(tmp_path):
  aside = tmp_path / f".ckpt.sap_jax-old-{DEAD_PID}-0123abcd"
  aside.mkdir()
  (aside / "content").write_text("old")
  assert safe_write.clean_stale(tmp_path / "ckpt") == [aside]
  assert (tmp_path / "ckpt" / "content").read_text() == "old" and not aside.exists()


def test_describe():
  assert safe_write.describe("/nonexistent/x") == "nothing"


def test_describe_folders_and_files(tmp_path):
  assert safe_write.describe(tmp_path) == "an empty folder"
  for name in "abcd":
    (tmp_path / name).write_text(name * 2)
  assert safe_write.describe(tmp_path) == "a folder with 4 entries (a, b, c, …)"
  assert safe_write.describe(tmp_path / "a") == "a file of 2 bytes"
  assert safe_write.describe(tmp_path / "a", [Kind("x", lambda p: True)]) == "a x"


def test_the_three_steps_of_write_dir(tmp_path):
  path = tmp_path / "ckpt"
  safe_write.write_dir(path, _fill("old"), OURS)
  target, tmp = safe_write.begin_dir(path, OURS, overwrite=True)
  assert target == path and tmp.parent == tmp_path and safe_write.TMP_TAG in tmp.name
  assert tmp.is_dir() and os.listdir(tmp) == []
  _fill("new")(tmp)
  assert (path / "content").read_text() == "old"  # nothing swapped before the commit
  assert safe_write.commit_dir(target, tmp, OURS, overwrite=True) == path
  assert (path / "content").read_text() == "new" and os.listdir(tmp_path) == ["ckpt"]
  # A commit the rule now refuses leaves the target as it was; discard removes the rest.
  target, tmp = safe_write.begin_dir(path, OURS, overwrite=True)
  _fill("newer")(tmp)
  with pytest.raises(RefusedWrite, match="already exists"):
    safe_write.commit_dir(target, tmp, OURS, overwrite=False)
  assert (path / "content").read_text() == "new"
  safe_write.discard(tmp)
  assert os.listdir(tmp_path) == ["ckpt"]
  with pytest.raises(RefusedWrite, match="already exists"):
    safe_write.begin_dir(path, OURS)
  assert os.listdir(tmp_path) == ["ckpt"]


# ------------------------------------------------------------------ failures of the disk


def test_os_error_of_finds_the_number_in_the_error_its_causes_and_tensorstore_text():
  import errno

  assert safe_write.os_error_of(OSError(errno.EFBIG, "File too large")) == errno.EFBIG
  wrapped = RuntimeError("write failed")
  wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
  assert safe_write.os_error_of(wrapped) == errno.ENOSPC
  tensorstore = ValueError("OUT_OF_RANGE: Failed to write: File too large [os_error_code='27']")
  assert safe_write.os_error_of(tensorstore) == 27
  assert safe_write.os_error_of(ValueError("bad shape")) is None
  error = safe_write.failed_write(tensorstore, Path("/data/out"))
  assert (type(error), error.errno, error.filename) == (OSError, 27, "/data/out")
  plain = ValueError("bad shape")
  assert safe_write.failed_write(plain, Path("/data/out")) is plain


def test_a_write_that_the_disk_refuses_names_the_target_and_leaves_nothing(tmp_path, monkeypatch):
  import errno

  (tmp_path / "keep.txt").write_text("mine")
  before = _tree(tmp_path)

  def full(fd):
    raise OSError(errno.ENOSPC, "No space left on device")

  monkeypatch.setattr(safe_write.os, "fsync", full)
  with pytest.raises(OSError) as caught:
    safe_write.write_file(tmp_path / "out.txt", "OURS new", OURS)
  assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(tmp_path / "out.txt"))
  assert _tree(tmp_path) == before  # no temporary left


def test_the_root_an_unknown_user_and_a_read_only_file_system_are_refused(tmp_path, monkeypatch):
  with pytest.raises(RefusedWrite, match="at /: it is the root of the file system; choose"):
    safe_write.check_target("/", OURS, overwrite=True)
  with pytest.raises(RefusedWrite, match="no user 'sap_jax_nouser' for ~sap_jax_nouser"):
    safe_write.check_target("~sap_jax_nouser/x", OURS, overwrite=False)
  assert safe_write.user_path("~/x") == Path.home() / "x"

  class ReadOnly:
    f_flag = os.ST_RDONLY

  monkeypatch.setattr(safe_write.os, "statvfs", lambda path: ReadOnly())
  with pytest.raises(RefusedWrite, match=r"is on a read-only file system; choose a path on a"):
    safe_write.check_target(tmp_path / "out", OURS, overwrite=False)
  assert list(tmp_path.iterdir()) == []
