"""Bad inputs to the `sap-jax` command line, for the catalogue (tests/test_bad_inputs.py).

Each case builds its files under a fresh folder, runs one refused command there and
returns its standard error. Checkpoints are trained once per process (a width-32 MLP,
one epoch on digits, and the same on an .npz copy of digits whose file is then moved
away) and copied into each case's folder.

Run the cases alone with ``python -m tests.bad_input_cases_cli`` (same checks as the
catalogue: the message matches, no traceback, every file byte-identical, nothing new).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from tests.bad_input_case import Case, cli_env, cli_error, run_cli
from tests.child_processes import interrupt_after_first_line

DEAD_PID = 2**22 + 1  # above Linux's largest pid_max: never a live process
MODEL = ("--model", "mlp", "--model-kw", "width=32", "--model-kw", "depth=1")
TRAIN = ("train", *MODEL, "--epochs", "1", "--batch-size", "128", "--quiet")
FAST = ("--n-trusted", "50", "--alphas", "10")  # a correction that would be quick


def _run_ok(*args: object, cwd: Path) -> None:
  result = run_cli(*args, cwd=cwd)
  assert result.returncode == 0, result.stderr


def _digits_npz(path: Path, shift: float = 0.0) -> None:
  from sap_jax.data import load_dataset

  ds = load_dataset("digits")
  x_test = ds.x_test.copy()
  x_test[0, 0, 0, 0] += shift
  np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=x_test, y_test=ds.y_test)


@functools.lru_cache(maxsize=1)
def _cache() -> Path:
  root = Path(tempfile.mkdtemp(prefix="sap_jax_bad_cli_"))
  atexit.register(shutil.rmtree, root, ignore_errors=True)
  _run_ok(*TRAIN, "--out", root / "ckpt", cwd=root)
  (root / "orig").mkdir()
  _digits_npz(root / "orig" / "d.npz")
  _run_ok(*TRAIN, "--dataset", "npz", "--data-root", "orig/d.npz", "--out", root / "npz", cwd=root)
  (root / "orig" / "d.npz").rename(root / "moved.npz")  # the recorded data root is gone
  _digits_npz(root / "changed.npz", shift=0.5)
  return root


# ------------------------------------------------------------------ setups


def _ckpt(tmp: Path, name: str = "ckpt") -> Path:
  shutil.copytree(_cache() / "ckpt", tmp / name, symlinks=True)
  return tmp / name


def _with(*steps):
  def setup(tmp: Path) -> None:
    for step in steps:
      step(tmp)

  return setup


def _user_folder(tmp: Path) -> None:
  (tmp / "mine").mkdir()
  (tmp / "mine" / "thesis.tex").write_text("years of work\n")
  (tmp / "mine" / "data.csv").write_text("1,2,3\n")


def _user_file(tmp: Path) -> None:
  (tmp / "notes.txt").write_text("my notes\n")


def _foreign_json(tmp: Path) -> None:
  (tmp / "results.json").write_text(json.dumps({"accuracy": 0.9}))


def _foreign_png(tmp: Path) -> None:
  from PIL import Image

  Image.new("RGB", (8, 8), "white").save(tmp / "sap_report.png")  # someone's picture


def _link_to_ckpt(tmp: Path) -> None:
  (tmp / "link").symlink_to(tmp / "ckpt")


def _earlier_output(tmp: Path) -> None:
  _ckpt(tmp, "sap")
  (tmp / "sap_report.json").write_text(json.dumps({"format": "sap_jax.report"}))


def _flip_bytes(tmp: Path) -> None:
  variables = tmp / "ckpt" / "variables"
  files = [
    p for p in variables.rglob("*") if p.is_file() and "d" in p.parts[len(variables.parts) :]
  ]
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  for i in range(len(data) // 2, len(data) // 2 + 4):
    data[i] ^= 0xFF
  largest.write_bytes(bytes(data))


def _no_metadata(tmp: Path) -> None:
  (tmp / "ckpt" / "metadata.json").unlink()


def _truncated_metadata(tmp: Path) -> None:
  meta = tmp / "ckpt" / "metadata.json"
  meta.write_text(meta.read_text()[:-40])


def _edit_metadata(edit, reseal: bool):
  """``edit(metadata)`` on the copied checkpoint; with ``reseal`` its seal is recomputed
  (`sap_jax.checkpoint.seal`), as a checkpoint written so would be; without, a hand edit."""

  def setup(tmp: Path) -> None:
    from sap_jax import checkpoint

    meta = tmp / "ckpt" / "metadata.json"
    record = json.loads(meta.read_text())
    edit(record["metadata"])
    if reseal:
      record["sealed"] = checkpoint.seal(record["metadata"])
    meta.write_text(json.dumps(record))

  return setup


def _set(*keys_and_value):
  *keys, last, value = keys_and_value

  def edit(metadata: dict) -> None:
    for key in keys:
      metadata = metadata[key]
    metadata[last] = value

  return edit


_bad_spec = _edit_metadata(_set("spec", "train", "bogus_option", 1), reseal=True)
_edited_model = _edit_metadata(_set("spec", "model_kwargs", "width", 64), reseal=True)


def _killed_save(tmp: Path) -> None:
  """What a `train --out ckpt` killed during its save leaves: the temporary only."""
  leftover = tmp / f".ckpt.sap_jax-tmp-{DEAD_PID}-0123abcd"
  shutil.copytree(_cache() / "ckpt" / "variables", leftover / "variables")


def _killed_swap(tmp: Path) -> None:
  """A `correct --overwrite` killed between its two renames: the old output set aside."""
  shutil.copytree(_cache() / "ckpt", tmp / f".sap.sap_jax-old-{DEAD_PID}-0123abcd")


def _npz_ckpt(tmp: Path) -> None:
  shutil.copytree(_cache() / "npz", tmp / "ckpt")


def _changed_data(tmp: Path) -> None:
  shutil.copy(_cache() / "changed.npz", tmp / "changed.npz")


def _text_as_npz(tmp: Path) -> None:
  (tmp / "data.npz").write_text("x_train,y_train\n0.1,3\n")


# ------------------------------------------------------------------ acts


def _cli(*args: object):
  def act(tmp: Path) -> str:
    return cli_error(*args, cwd=tmp)

  return act


def _interrupted_training(tmp: Path) -> str:
  """Ctrl-C once training has started; returns standard error."""
  cmd = [sys.executable, "-m", "sap_jax", *TRAIN[:-1], "--epochs", "100000", "--out", "out"]
  code, first, err = interrupt_after_first_line(cmd, tmp, cli_env())
  assert code == 130, (code, first + err)
  return first + err


def _cli_patched(patch: str, *args: object):
  """The command in a Python that first runs ``patch`` (a simulated failure of the world)."""

  def act(tmp: Path) -> str:
    code = f"import sys\n{patch}\nfrom sap_jax.cli import main\nsys.exit(main(sys.argv[1:]))"
    return cli_error("-c", code, *args, cwd=tmp, module=False)

  return act


def _cli_missing_peer(*flags: str, env: dict[str, str] | None = None):
  """Process 0 of 2 started alone on a free local port."""

  def act(tmp: Path) -> str:
    from tests.child_processes import free_port

    coordinator = ("--coordinator", f"127.0.0.1:{free_port()}", "--num-processes", "2")
    args = (*TRAIN, "--out", "out", *coordinator, "--process-id", "0", *flags)
    return cli_error(*args, cwd=tmp, env=env)

  return act


FILE_SIZE_LIMIT = """
import resource
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))  # ulimit -f: 2000 bytes
"""
DISK_FULL = """
import orbax.checkpoint as ocp
def full(self, *a, **k):  # tensorstore's own words for ENOSPC
  raise ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device [os_error_code='28']")
ocp.StandardCheckpointer.save = full
"""
CTRL_C_IN_SAVE = """
import os, signal, time
import orbax.checkpoint as ocp
started = ocp.StandardCheckpointer.save
def save(self, *a, **k):  # Ctrl-C while orbax's threads write the arrays
  result = started(self, *a, **k)
  os.kill(os.getpid(), signal.SIGINT)
  time.sleep(1)
  return result
ocp.StandardCheckpointer.save = save
"""
READ_ONLY = """
import os
class _ReadOnly:
  f_flag = os.ST_RDONLY
os.statvfs = lambda path: _ReadOnly()
"""

NOT_CKPT = r"refusing to replace .*: it is {what}, not a sap_jax checkpoint; --overwrite"
DAMAGED = r"error: damaged checkpoint .*; restore it from a copy"

CASES: list[Case] = [
  # --- the overwrite rule
  Case(
    "cli_correct_overwrite_user_folder",
    NOT_CKPT.format(what=r"a folder with 2 entries \(data.csv, thesis.tex\)"),
    _cli("correct", "ckpt", "--out", "mine", "--overwrite", *FAST),
    _with(_ckpt, _user_folder),
  ),
  Case(
    "cli_correct_overwrite_user_file",
    NOT_CKPT.format(what="a file of 9 bytes"),
    _cli("correct", "ckpt", "--out", "notes.txt", "--overwrite", *FAST),
    _with(_ckpt, _user_file),
  ),
  # --- --layer-call (which call of a layer called more than once counts)
  Case(
    "cli_correct_layer_call_malformed",
    r"--layer-call: expected NAME=K such as head=1 .*got 'head'",
    _cli("correct", "ckpt", "--out", "sap", "--layer-call", "head", *FAST),
    _ckpt,
  ),
  Case(
    "cli_correct_layer_call_layer_called_once",
    r"error: calls\['head'\]: layer 'head' is called once per forward, so there is no call "
    r"to choose; no layer is called more than once\. Drop 'head' from calls",
    _cli("correct", "ckpt", "--out", "sap", "--layer-call", "head=1", *FAST),
    _ckpt,
  ),
  Case(
    "cli_train_overwrite_user_folder",
    NOT_CKPT.format(what=r"a folder with 2 entries \(data.csv, thesis.tex\)"),
    _cli(*TRAIN, "--out", "mine", "--overwrite"),
    _user_folder,
  ),
  Case(
    "cli_train_existing_out_without_overwrite",
    r"checkpoint path .*ckpt already exists \(a sap_jax checkpoint\); pass --overwrite",
    _cli(*TRAIN, "--out", "ckpt"),
    _ckpt,
  ),
  Case(
    "cli_correct_out_is_the_input",
    r"refusing to write the checkpoint at .*ckpt: it is the input ckpt, which is never written",
    _cli("correct", "ckpt", "--out", "ckpt", "--overwrite", *FAST),
    _ckpt,
  ),
  Case(
    "cli_correct_out_inside_the_input",
    r"checkpoint at .*ckpt/variables: it lies inside the input ckpt",
    _cli("correct", "ckpt", "--out", "ckpt/variables", "--overwrite", *FAST),
    _ckpt,
  ),
  Case(
    "cli_correct_out_contains_the_input",
    r"it contains the input ckpt, which is never written; choose an output path outside it",
    _cli("correct", "ckpt", "--out", ".", "--overwrite", *FAST),
    _ckpt,
  ),
  Case(
    "cli_correct_out_is_a_symlink_to_the_input",
    r"checkpoint at .*link: it is the input ckpt",
    _cli("correct", "ckpt", "--out", "link", "--overwrite", *FAST),
    _with(_ckpt, _link_to_ckpt),
  ),
  Case(
    "cli_correct_report_is_the_input_metadata",
    r"report at .*ckpt/metadata.json: it lies inside the input ckpt",
    _cli("correct", "ckpt", "--out", "sap", "--report", "ckpt/metadata.json", "--overwrite"),
    _ckpt,
  ),
  Case(
    "cli_correct_report_not_ours",
    r"refusing to replace .*results.json: it is a file of \d+ bytes, not a sap_jax report",
    _cli("correct", "ckpt", "--out", "sap", "--report", "results.json", "--overwrite", *FAST),
    _with(_ckpt, _foreign_json),
  ),
  Case(
    "cli_correct_report_inside_out",
    r"checkpoint path .*sap contains the report path .*sap/r.json; give them separate paths",
    _cli("correct", "ckpt", "--out", "sap", "--report", "sap/r.json", *FAST),
    _ckpt,
  ),
  Case(
    "cli_correct_existing_outputs_without_overwrite",
    r"checkpoint path .*sap already exists \(a sap_jax checkpoint\); pass --overwrite",
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _with(_ckpt, _earlier_output),
  ),
  Case(
    "cli_correct_existing_report_without_overwrite",
    r"report path .*sap_report.json already exists \(a sap_jax report\); pass --overwrite",
    _cli("correct", "ckpt", "--out", "new", "--report", "sap_report.json", *FAST),
    _with(_ckpt, _earlier_output),
  ),
  Case(
    "cli_correct_figure_not_ours",
    r"refusing to replace .*sap_report.png: it is a file of \d+ bytes, not a sap_jax figure",
    _cli("correct", "ckpt", "--out", "sap", "--overwrite", *FAST),
    _with(_ckpt, _foreign_png),
  ),
  Case(
    "cli_correct_existing_figure_without_overwrite",
    r"figure path .*sap_report.png already exists \(a file of \d+ bytes\); pass --overwrite",
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _with(_ckpt, _foreign_png),
  ),
  Case(
    "cli_correct_report_is_its_own_figure",
    r"the report path .*r.png is the figure path .*r.png; give them separate paths",
    _cli("correct", "ckpt", "--out", "sap", "--report", "r.png", *FAST),
    _ckpt,
  ),
  Case(
    "cli_train_out_below_a_file",
    r"cannot write .*notes.txt/ckpt: .*notes.txt is a file of 9 bytes, not a folder",
    _cli(*TRAIN, "--out", "notes.txt/ckpt"),
    _user_file,
  ),
  Case(
    "cli_correct_out_left_aside_by_a_killed_swap",
    r"checkpoint path .*sap already exists \(a sap_jax checkpoint, left aside as "
    r"\.sap\.sap_jax-old-\d+-[0-9a-f]+ by an interrupted save\); pass --overwrite",
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _with(_ckpt, _killed_swap),
  ),
  # --- damaged, incomplete and wrong checkpoints
  Case(
    "cli_evaluate_flipped_bytes",
    DAMAGED,
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _flip_bytes),
  ),
  Case(
    "cli_correct_flipped_bytes",
    DAMAGED,
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _with(_ckpt, _flip_bytes),
  ),
  Case(
    "cli_evaluate_checkpoint_killed_mid_save",
    r"No checkpoint at .*ckpt: its save was interrupted \(the unfinished "
    r"\.ckpt\.sap_jax-tmp-\d+-[0-9a-f]+ is left beside it.*run the command that writes it again",
    _cli("evaluate", "ckpt"),
    _killed_save,
  ),
  Case(
    "cli_correct_the_temporary_of_a_killed_save",
    r"is the unfinished folder of an interrupted save, not a checkpoint; run the command",
    _cli("correct", f".ckpt.sap_jax-tmp-{DEAD_PID}-0123abcd", "--out", "sap", *FAST),
    _killed_save,
  ),
  Case(
    "cli_evaluate_checkpoint_without_metadata",
    r"damaged checkpoint .*ckpt: it has variables/ but no metadata.json \(incomplete\); "
    r"restore it from a copy",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _no_metadata),
  ),
  Case(
    "cli_evaluate_truncated_metadata",
    r"(?i)damaged checkpoint .*metadata.json is not readable JSON",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _truncated_metadata),
  ),
  Case(
    "cli_evaluate_unreadable_run_spec",
    r"the run spec in ckpt cannot be read .*bogus_option.*another sap_jax version",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _bad_spec),
  ),
  Case(
    "cli_evaluate_arrays_that_do_not_fit_the_model",
    r"the arrays of ckpt do not fit the model its metadata describes \(.*saved \(32,\), "
    r"model \(64,\)\).*restore it from a copy",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _edited_model),
  ),
  Case(
    "cli_evaluate_a_user_folder",
    r"mine is not a sap_jax checkpoint: metadata.json is missing",
    _cli("evaluate", "mine"),
    _user_folder,
  ),
  Case(
    "cli_evaluate_a_text_file",
    r"notes.txt is a file of 9 bytes, not a sap_jax checkpoint directory",
    _cli("evaluate", "notes.txt"),
    _user_file,
  ),
  Case(
    "cli_evaluate_missing_checkpoint",
    r"No checkpoint at .*nowhere",
    _cli("evaluate", "nowhere"),
  ),
  # --- data provenance
  Case(
    "cli_evaluate_moved_data",
    r"the data ckpt was trained on are not at .*orig/d.npz, where it recorded them .*; "
    r"if they moved, pass --data-root NEW_PATH",
    _cli("evaluate", "ckpt"),
    _npz_ckpt,
  ),
  Case(
    "cli_correct_moved_data",
    r"if they moved, pass --data-root NEW_PATH",
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _npz_ckpt,
  ),
  Case(
    "cli_evaluate_wrong_data_root",
    r"no data at --data-root .*nothere.npz: npz file .* not found",
    _cli("evaluate", "ckpt", "--data-root", "nothere.npz"),
    _npz_ckpt,
  ),
  Case(
    "cli_evaluate_changed_data",
    r"the data at .*changed.npz differ from those ckpt was trained on: test split \(inputs\) "
    r"changed\. Point --data-root at the data it was trained on, or pass --allow-changed-data",
    _cli("evaluate", "ckpt", "--data-root", "changed.npz"),
    _with(_npz_ckpt, _changed_data),
  ),
  Case(
    "cli_correct_changed_data",
    r"test split \(inputs\) changed.*--allow-changed-data",
    _cli("correct", "ckpt", "--data-root", "changed.npz", "--out", "sap", *FAST),
    _with(_npz_ckpt, _changed_data),
  ),
  Case(
    "cli_train_text_file_as_npz",
    r"^(?![\s\S]*pickle)[\s\S]*error: .*data.npz' is not an \.npz archive .*np\.savez",
    _cli(*TRAIN, "--dataset", "npz", "--data-root", "data.npz", "--out", "out"),
    _text_as_npz,
  ),
  # --- malformed flags
  Case(
    "cli_model_kw_bad_value",
    r"error: model 'mlp' \(width='abc', depth=1\) cannot be built .*check the --model-kw values",
    _cli(*TRAIN, "--model-kw", "width=abc", "--out", "out"),
  ),
  Case(
    "cli_model_kw_unknown_name",
    r"unexpected keyword argument\(s\) \['colour'\]; it accepts .*fix the --model-kw options",
    _cli(*TRAIN, "--model-kw", "colour=3", "--out", "out"),
  ),
  Case(
    "cli_model_kw_without_equals",
    r"argument --model-kw: expected KEY=VALUE such as width=64, got 'width'",
    _cli(*TRAIN, "--model-kw", "width", "--out", "out"),
  ),
  Case(
    "cli_data_opt_with_a_list",
    r"error: num_samples must be an int >= \d+, got \[1, 2\]",
    _cli(*TRAIN, "--dataset", "mnist1d", "--data-opt", "num_samples=[1,2]", "--out", "out"),
  ),
  Case(
    "cli_data_opt_unknown",
    r"data set 'digits' takes no option\(s\) \['foo'\]",
    _cli(*TRAIN, "--data-opt", "foo=1", "--out", "out"),
  ),
  Case(
    "cli_correct_alphas_not_numbers",
    r"argument --alphas: expected comma-separated numbers, got 'ten'",
    _cli("correct", "ckpt", "--out", "sap", "--alphas", "ten"),
    _ckpt,
  ),
  Case(
    "cli_correct_negative_alpha",
    r"argument --alphas: every α must be finite and > 0 .*got -1 in '-1'",
    _cli("correct", "ckpt", "--out", "sap", "--alphas", "-1"),
    _ckpt,
  ),
  Case(
    "cli_correct_zero_trusted",
    r"argument --n-trusted: expected an integer >= 1, got '0'",
    _cli("correct", "ckpt", "--out", "sap", "--n-trusted", "0"),
    _ckpt,
  ),
  Case(
    "cli_train_bad_noise_spec",
    r"cannot parse noise spec 'sym:2'.*symmetric:0.25",
    _cli(*TRAIN, "--noise", "sym:2", "--out", "out"),
  ),
  # --- the run's own recipe: sealed by the checkpoint, the noisy labels compared
  Case(
    "cli_evaluate_hand_edited_seed",
    r"^error: damaged checkpoint .*ckpt: spec\.seed in metadata\.json changed after the save "
    r"\(the checksum recorded then does not match\); restore it from a copy",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _edit_metadata(_set("spec", "seed", 7), reseal=False)),
  ),
  Case(
    "cli_correct_hand_edited_noise",
    r"^error: damaged checkpoint .*ckpt: spec\.noise in metadata\.json changed after the save",
    _cli("correct", "ckpt", "--out", "sap", *FAST),
    _with(_ckpt, _edit_metadata(_set("spec", "noise", "asymmetric:0.4"), reseal=False)),
  ),
  Case(
    "cli_evaluate_hand_edited_label_fingerprint",
    r"^error: damaged checkpoint .*ckpt: labels\.y_train in metadata\.json changed after",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _edit_metadata(_set("labels", "y_train", "sha256:0"), reseal=False)),
  ),
  Case(
    "cli_evaluate_labels_derived_otherwise",
    r"^error: the noisy training labels re-derived from the run spec of ckpt \(seed, noise, "
    r"split sizes\) differ from those it was trained on; .*or train again\.\n$",
    _cli("evaluate", "ckpt"),
    _with(_ckpt, _edit_metadata(_set("labels", "y_train", "sha256:0"), reseal=True)),
  ),
  # --- failures of the world: one line naming the cause and the path, nothing left
  Case(
    "cli_train_file_size_limit",
    r"^error: File too large: /.*/out; the file-size limit \(ulimit -f\) is below what this "
    r"writes: raise it or write elsewhere \(nothing was left behind\)\.\n$",
    _cli_patched(FILE_SIZE_LIMIT, *TRAIN, "--out", "out"),
  ),
  Case(
    "cli_train_disk_full",
    r"^error: No space left on device: /.*/out; the disk is full: free space there or write "
    r"elsewhere \(nothing was left behind\)\.\n$",
    _cli_patched(DISK_FULL, *TRAIN, "--out", "out"),
  ),
  Case(
    "cli_train_read_only_target",
    r"^error: cannot write /.*/out: /.* is on a read-only file system; choose a path on a "
    r"writable one\.\n$",
    _cli_patched(READ_ONLY, *TRAIN, "--out", "out"),
  ),
  Case(
    "cli_train_out_root",
    r"^error: cannot write the checkpoint at /: it is the root of the file system; choose a "
    r"new path",
    _cli(*TRAIN, "--out", "/"),
  ),
  Case(
    "cli_train_out_unknown_user",
    r"^error: cannot use the path ~sap_jax_nouser/x: this machine has no user "
    r"'sap_jax_nouser' for ~sap_jax_nouser to name; write the folder out in full\.\n$",
    _cli(*TRAIN, "--out", "~sap_jax_nouser/x"),
  ),
  # --- a missing peer: a bounded wait, one line (the coordinator, who is there, the wait)
  Case(
    "cli_train_missing_peer",
    r"^error: waited 2 s at the coordinator 127\.0\.0\.1:\d+ for the 2 processes to join: "
    r"only process 0 \(this one\) is known to be there\. Start the same command with "
    r"--process-id 0 … 1 \(or wait longer: --peer-timeout SECONDS, or "
    r"\$SAP_JAX_PEER_TIMEOUT\)\.\n$",
    _cli_missing_peer("--peer-timeout", "2"),
  ),
  Case(
    "cli_train_missing_peer_env_timeout",
    r"^error: waited 2 s at the coordinator 127\.0\.0\.1:\d+ for the 2 processes",
    _cli_missing_peer(env={"SAP_JAX_PEER_TIMEOUT": "2"}),
  ),
  Case(
    "cli_train_peer_timeout_env_not_a_number",
    r"^error: \$SAP_JAX_PEER_TIMEOUT: expected a number of seconds > 0, got 'soon'; set it",
    _cli_missing_peer(env={"SAP_JAX_PEER_TIMEOUT": "soon"}),
  ),
  Case(
    "cli_train_peer_timeout_negative",
    r"argument --peer-timeout: expected a number of seconds > 0, got '-1'",
    _cli(*TRAIN, "--out", "out", "--distributed", "--peer-timeout", "-1"),
  ),
  # --- Ctrl-C
  Case(
    "cli_ctrl_c_during_the_checkpoint_write",
    r"^interrupted: nothing was written\.\n$",
    _cli_patched(CTRL_C_IN_SAVE, *TRAIN, "--out", "out"),
  ),
  Case(
    "cli_ctrl_c_during_training",
    r"\ninterrupted: nothing was written\.\n?$",
    _interrupted_training,
  ),
]


def _checksums(root: Path) -> dict[str, str]:
  import hashlib

  sums = {}
  for path in sorted(root.rglob("*")):
    key = str(path.relative_to(root))
    if path.is_symlink():
      sums[key] = "link:" + os.readlink(path)
    elif path.is_file():
      sums[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
      sums[key] = "dir"
  return sums


def run_cases(names: list[str] | None = None) -> list[str]:
  """Runs the cases (all, or those named) with the catalogue's checks; returns failures."""
  import re

  from tests.bad_input_case import is_traceback

  failures = []
  for case in CASES:
    if names and case.name not in names:
      continue
    with tempfile.TemporaryDirectory() as tmp_name:
      tmp = Path(tmp_name)
      case.setup(tmp)
      before = _checksums(tmp)
      try:
        text = case.act(tmp)
      except AssertionError as e:
        failures.append(f"{case.name}: {e}")
        continue
      after = _checksums(tmp)
      problems = []
      if is_traceback(text):
        problems.append("traceback")
      if not re.search(case.match, text):
        problems.append(f"{case.match!r} not in {text!r}")
      if after != before:
        problems.append(f"files changed: {sorted(set(before) ^ set(after))} or contents")
      status = "ok" if not problems else "FAIL " + "; ".join(problems)
      print(f"{case.name}: {status}", flush=True)
      if problems:
        failures.append(case.name)
  return failures


if __name__ == "__main__":
  failed = run_cases(sys.argv[1:] or None)
  print(f"{len(CASES)} cases, {len(failed)} failed: {failed}")
  sys.exit(1 if failed else 0)
