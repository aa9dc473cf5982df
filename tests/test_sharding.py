"""SAP on sharded global arrays: 8 CPU devices in one process, and 2 processes × 4 devices
joined by `jax.distributed` on localhost (children: tests/sharding_child.py)."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

import sap_jax
from sap_jax import sharding as shd
from sap_jax.projection import eigh_basis
from sap_jax.spread_eigh import assign_layers, congruence, spread_eigh, spread_plan
from tests import sharding_child as child
from tests.child_processes import run_devices_child, run_process_group


@pytest.fixture(scope="module")
def devices(tmp_path_factory) -> dict:
  out = tmp_path_factory.mktemp("devices") / "out.json"
  run_devices_child(["tests.sharding_child", "devices", str(out)], devices=8)
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> dict:
  tmp = tmp_path_factory.mktemp("processes")
  out = tmp / "out.json"
  run_process_group(["tests.sharding_child", "process", str(out)], tmp / "logs", n=2)
  return json.loads(out.read_text())


_EIGH = re.compile(r'custom_call_target="[^"]*syev')


def _close(a, b, atol=1e-5, rtol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=atol, rtol=rtol)


# --- 8 devices in one process --------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 100])
@pytest.mark.parametrize("variant", ["", "_local"])
def test_stats_on_sharded_batches_equal_one_device(devices, budget, variant):
  one = devices["one"][f"stats_budget_{budget}"]
  many = devices["many"][f"stats_budget_{budget}{variant}"]
  assert list(many) == list(one)
  for path in one:
    # same rows (the budget draws per global sample index), so the same count exactly
    assert many[path]["count"] == one[path]["count"]
    scale = np.abs(np.asarray(one[path]["gram"])).max()
    _close(many[path]["gram"], one[path]["gram"], atol=1e-5 * scale)


def test_budget_keeps_fewer_rows_than_all(devices):
  full = devices["one"]["stats_budget_None"]["Conv_0"]["count"]
  kept = devices["one"]["stats_budget_100"]["Conv_0"]["count"]
  assert kept < full


def test_per_batch_program_has_no_collective_and_combine_one_per_layer(devices):
  coll = devices["collectives"]
  assert coll["step"] == []  # each device adds to its own partial sums
  # One all-reduce per run, XLA-combined: one d×d operand per layer, one for the counts.
  grams = devices["one"]["stats_budget_None"]
  dims = sorted([len(g["gram"])] * 2 for g in grams.values())
  assert [kind for kind, _ in coll["combine"]] == ["all-reduce"]
  shapes = coll["combine"][0][1]
  assert sorted(s for s in shapes if len(s) == 2) == dims
  assert [s for s in shapes if len(s) != 2] == [[len(grams)]]


def test_losses_evaluation_and_logits_equal_one_device(devices):
  one, many = devices["one"], devices["many"]
  _close(many["losses"], one["losses"])
  assert many["eval"]["accuracy"] == one["eval"]["accuracy"]
  _close(many["eval"]["loss"], one["eval"]["loss"])
  _close(many["logits"], one["logits"])


@pytest.mark.parametrize("budget", [None, 50])
def test_run_sap_on_sharded_arrays_equals_one_device(devices, budget):
  one, many = devices["one"][f"sap_{budget}"], devices["many"][f"sap_{budget}"]
  assert many["trusted"] == one["trusted"]
  assert many["alpha"] == one["alpha"]
  assert many["val"] == one["val"]
  assert many["rows"] == one["rows"]
  for path in one["spectra"]:
    _close(many["spectra"][path], one["spectra"][path], atol=1e-6)
  for path in one["corrected"]:
    _close(many["corrected"][path], one["corrected"][path])
  assert devices["many"][f"sap_{budget}_replicated"]


def test_mixed_decomposition_methods_on_sharded_arrays_equal_one_device(devices):
  one, many = devices["one"]["sap_mixed"], devices["many"]["sap_mixed"]
  assert one["methods"] == many["methods"]
  assert sorted(set(one["methods"].values())) == ["eigh", "solve"]
  assert (many["trusted"], many["alpha"], many["val"]) == (one["trusted"], one["alpha"], one["val"])
  assert set(one["spectra"]) == {p for p, m in one["methods"].items() if m == "eigh"}
  for path in one["spectra"]:
    _close(many["spectra"][path], one["spectra"][path], atol=1e-6)
  for path in one["corrected"]:
    _close(many["corrected"][path], one["corrected"][path])
  one, many = devices["one"]["correct_mixed"], devices["many"]["correct_mixed"]
  assert list(many) == list(one)
  for path in one:
    _close(many[path], one[path])


def test_per_layer_tuning_on_sharded_arrays_equals_one_device(devices):
  one, many = devices["one"]["tuned"], devices["many"]["tuned"]
  assert one is not None and set(one) == set(many)
  for name, alpha in one.items():
    assert many[name] == pytest.approx(alpha, rel=1e-4)


def test_sensitivity_and_influence_on_sharded_arrays_equal_one_device(devices):
  one, many = devices["one"], devices["many"]
  assert set(one["sensitivity"]) == set(many["sensitivity"])
  for name, g in one["sensitivity"].items():
    assert many["sensitivity"][name] == pytest.approx(g, rel=1e-4, abs=1e-9)
  np.testing.assert_allclose(many["influence"], one["influence"], rtol=1e-4, atol=1e-9)


def test_correct_on_sharded_trusted_inputs_equals_one_device(devices):
  one, many = devices["one"]["correct"], devices["many"]["correct"]
  assert list(many) == list(one)
  for path in one:
    _close(many[path], one[path])


def test_data_parallel_training_equals_one_device(devices):
  one, many = devices["one"]["train"], devices["many"]["train"]
  _close(many["history"], one["history"], atol=1e-5)
  assert list(many["variables"]) == list(one["variables"])
  assert any("batch_stats" in path for path in one["variables"])  # BatchNorm synchronised
  for path in one["variables"]:
    _close(many["variables"][path], one["variables"][path], atol=1e-5)


def test_correct_in_rounds_with_a_row_budget_equals_one_device(devices):
  """Round 1's congruence Qᵀ C Q and eigh run spread over the devices; batch 12 on 8
  devices (2 per device) keeps the same budgeted rows as one process's batches of 12."""
  one, many = devices["one"]["correct_rounds"], devices["many"]["correct_rounds"]
  assert list(many) == list(one)
  for path in one:
    _close(many[path], one[path], atol=1e-5)


def test_sap_rounds_on_sharded_inputs_equals_one_device(devices):
  one, many = devices["one"]["sap_rounds"], devices["many"]["sap_rounds"]
  assert len(one["records"]) == 2  # round 1 ran (the α = 300 model fits the labels)
  assert many["alphas"] == one["alphas"] and one["alphas"][0] == 300.0
  assert many["records"] == one["records"]
  for path in one["variables"]:
    _close(many["variables"][path], one["variables"][path], atol=1e-5)


def test_spread_eigh_equals_one_device(devices):
  """Every device's outputs start at zero and are summed: equality with one device's
  eigh (the same program, so up to round-off) means exactly one device contributed each
  layer's basis (two would double it)."""
  spread, one = devices["eigh_spread"], devices["eigh_one"]
  assert set(spread) == set(one) == {p[0] for p in child.spread_grams()}
  for name, (spectrum, vectors) in one.items():
    _close(spread[name][0], spectrum, atol=1e-6)
    _close(spread[name][1], vectors, atol=1e-5)


def test_padded_local_batches_pad_each_share_with_its_first_sample(devices):
  """40 samples on 8 devices (5 each), batches of 2 per device: the last batch holds each
  device's fifth sample, padded with that device's first one and masked."""
  batches = devices["padded_batches"]
  assert [len(x) for x, _, _ in batches] == [16, 16, 16]
  for i, (_, starts, valid) in enumerate(batches):
    assert starts == [5 * d + 2 * i for d in range(8)]
    assert valid == (None if i < 2 else [1] * 8)  # only the padded batch is masked
  last = batches[2][0]
  assert last == [float(v) for d in range(8) for v in (5 * d + 4, 5 * d)]


def _computations(hlo: str) -> dict[str, list[str]]:
  """HLO computation name → its instruction lines."""
  comps, name = {}, None
  for line in hlo.splitlines():
    head = re.match(r"(?:ENTRY )?%(\S+) \(", line)
    if head and line.rstrip().endswith("{"):
      name = "ENTRY" if line.startswith("ENTRY") else head.group(1)
      comps[name] = []
    elif name is not None and line.strip() != "}":
      comps[name].append(line)
  return comps


def test_spread_program_runs_each_layer_eigh_on_one_device(devices):
  """The compiled spread program (11 layers, 8 devices): the plan gives each layer to one
  device; each layer's eigh is the branch of a conditional on the device index that only
  its owner takes (none runs unconditionally); one all-reduce shares the bases."""
  grams = child.spread_grams()
  table = spread_plan([g.shape for g in grams.values()], 8)
  assert table.shape[0] == 8 and table.shape[1] >= 2  # 11 layers: some devices get several
  assert sorted(int(i) for i in table.ravel() if i >= 0) == list(range(len(grams)))
  comps = _computations(devices["spread_hlo"])
  eighs = {n for n, lines in comps.items() if any(_EIGH.search(ln) for ln in lines)}
  branches = set()
  for lines in comps.values():
    for ln in lines:
      if " conditional(" in ln:
        branches |= set(re.findall(r"(?:true|false)_computation=%([\w.\-]+)", ln))
        listed = re.search(r"branch_computations=\{([^}]*)\}", ln)
        branches |= set(re.findall(r"%([\w.\-]+)", listed.group(1) if listed else ""))
  assert "ENTRY" not in eighs and eighs <= branches
  assert sum(len([ln for ln in comps[n] if _EIGH.search(ln)]) for n in eighs) == len(grams)
  coll = shd.collectives(devices["spread_hlo"])
  assert [c.kind for c in coll] == ["all-reduce"]
  assert coll[0].bytes == sum(4 * (g.shape[0] + g.size) for g in grams.values())


def test_errors_name_the_problem(devices):
  err = devices["errors"]
  assert "cannot be split evenly over the 8 devices" in err["indivisible"]
  assert "multiple of 8" in err["indivisible"]
  for name in ("stats_not_batch", "loss_not_batch"):
    assert "leading axis to be the samples" in err[name]
  assert "12 samples cannot be split evenly" in err["local_batches_indivisible"]
  assert "Non-finite activations" in err["nan_in_later_batch"]


# --- 2 processes × 4 devices --------------------------------------------------------------


def test_run_sap_on_two_processes_equals_one_process(two_processes):
  apply_fn, variables, x, y, xv, yv = child.case()
  one = sap_jax.run_sap(
    apply_fn,
    variables,
    x,
    y,
    xv,
    yv,
    n_trusted=child.N_TRUSTED,
    batch_size=child.BATCH,
    rows_per_batch=50,
    alphas=child.ALPHAS,
  )
  one = child.sap_summary(one, apply_fn, variables)
  many = two_processes
  assert many["trusted"] == one["trusted"]
  assert many["alpha"] == one["alpha"]
  assert many["val"] == one["val"]
  assert many["rows"] == one["rows"]
  for path in one["corrected"]:
    _close(many["corrected"][path], one["corrected"][path])


def test_training_on_two_processes_equals_one_process(two_processes):
  one, many = child.train_summary(None), two_processes["train"]
  _close(many["history"], one["history"], atol=1e-5)
  for path in one["variables"]:
    _close(many["variables"][path], one["variables"][path], atol=1e-5)


# --- in process (one device) -----------------------------------------------------------------


def test_assign_layers_largest_first_to_least_loaded():
  assert assign_layers([1.0, 8.0, 27.0, 64.0], 2) == [[3], [2, 1, 0]]
  assert assign_layers([5.0, 5.0], 4) == [[0], [1], [], []]


def test_host_and_single_device_arrays_are_not_global():
  x = np.zeros((4, 2), np.float32)
  assert shd.data_axis_of(x) is None
  assert shd.data_axis_of(jax.numpy.asarray(x)) is None
  mesh = shd.data_mesh(jax.devices()[:1])
  assert not shd.is_global(shd.shard_batch(x, mesh))  # one device holds it whole


def test_collectives_parses_tuple_and_single_operands():
  hlo = (
    "%all-reduce = (f32[18,18]{1,0}, f32[3]{0}) all-reduce(%a, %b), channel_id=1\n"
    "%ag = bf16[8,4]{1,0} all-gather(%c), dimensions={0}\n"
    "%x = f32[2]{0} add(%d, %e)\n"
  )
  got = shd.collectives(hlo)
  assert [(c.kind, c.shapes) for c in got] == [
    ("all-reduce", (("f32", (18, 18)), ("f32", (3,)))),
    ("all-gather", (("bf16", (8, 4)),)),
  ]
  assert got[0].bytes == 4 * (18 * 18 + 3) and got[1].bytes == 2 * 32


def test_collectives_parses_long_tuples_with_index_comments():
  """XLA marks every fifth operand of a long tuple with /*index=5*/ (an '=' inside)."""
  shapes = ", ".join(["f32[2,2]{1,0}"] * 5 + ["/*index=5*/f32[3]{0}"])
  hlo = f"  ROOT %all-reduce = ({shapes}) all-reduce(%a, %b), channel_id=1\n"
  (got,) = shd.collectives(hlo)
  assert got.kind == "all-reduce" and len(got.shapes) == 6
  assert got.bytes == 4 * (5 * 4 + 3)


def test_spread_plan_gives_every_layer_to_one_device():
  shapes = [(3, 5, 5), (9, 9), (2, 2), (4, 4), (7, 7)]
  table = spread_plan(shapes, 3)
  assert table.shape == (3, 2) and table.dtype == np.int32
  assert sorted(int(i) for i in table.ravel() if i >= 0) == [0, 1, 2, 3, 4]
  assert table[0, 0] == 1  # d³ = 729: the largest first
  assert spread_plan([(2, 2)], 4).tolist() == [[0], [-1], [-1], [-1]]


def _weighted(basis):
  """V diag(σ̃) Vᵀ: the basis without the eigenvectors' signs."""
  v, s = np.asarray(basis.vectors), np.asarray(basis.spectrum)
  return np.einsum("...ij,...j,...kj->...ik", v, s, v)


def test_spread_eigh_with_transforms_on_one_device_mesh():
  """Qᵀ C Q formed where its eigh runs; on a one-device mesh, as eigh of congruence."""
  rng = np.random.default_rng(3)
  grams, qs = {}, {}
  for name, shape in (("a", (6, 6)), ("b", (2, 4, 4))):
    r = rng.normal(size=(*shape[:-2], 3 * shape[-1], shape[-1])).astype(np.float32)
    grams[(name,)] = np.swapaxes(r, -1, -2) @ r
    qs[(name,)] = rng.normal(size=shape).astype(np.float32)
  mesh = shd.data_mesh(jax.devices()[:1])
  got = spread_eigh(grams, mesh, transforms=qs)
  for p in grams:
    want = eigh_basis(congruence(qs[p], grams[p]))
    _close(got[p].spectrum, want.spectrum, atol=1e-6)
    _close(_weighted(got[p]), _weighted(want), atol=1e-5)  # eigenvectors up to sign
  with pytest.raises(ValueError, match="one Q per layer"):
    spread_eigh(grams, mesh, transforms={("a",): qs[("a",)]})


def test_check_divides_names_the_fix():
  mesh = shd.data_mesh(jax.devices()[:1])
  assert shd.check_divides(6, mesh) == 6
  with pytest.raises(ValueError, match="no 'model' axis"):
    shd.num_shards(mesh, "model")
