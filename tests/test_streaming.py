"""SAP's phases over sources: equal to the in-memory run, one pass per split, every host
reading only its own samples."""

import json

import jax
import numpy as np
import pytest
from flax import serialization

import sap_jax as sj
from sap_jax import streaming
from sap_jax.data.folder import load_folder
from sap_jax.data.sources import ArraySource
from sap_jax.evaluation import predict_logits
from sap_jax.train import train_model
from sap_jax.trusted import per_example_loss
from tests.child_processes import run_process_group
from tests.stream_cases import (
  SIZE,
  CountingSource,
  folder_model,
  folder_sources,
  sap_options,
  train_config,
  write_folder,
)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  """(root, in-memory data set, model, apply_fn, variables trained in memory)."""
  root = write_folder(tmp_path_factory.mktemp("stream") / "folder")
  ds = load_folder(root=root, image_size=SIZE)
  model, apply_fn = folder_model()
  trained = train_model(model, ds.x_train, ds.y_train, train_config(), progress=False)
  variables = jax.tree_util.tree_map(np.asarray, trained.variables)
  return root, ds, model, apply_fn, variables


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(tree)]


def test_training_on_a_folder_source_equals_training_on_its_arrays(folder):
  root, ds, model, _, variables = folder
  train, _ = folder_sources(root)
  streamed = train_model(model, train, None, train_config(), progress=False)
  for a, b in zip(_leaves(streamed.variables), _leaves(variables)):
    np.testing.assert_array_equal(a, b)


def test_every_phase_on_a_folder_source_equals_its_arrays(folder):
  root, ds, _, apply_fn, variables = folder
  train, test = folder_sources(root)
  np.testing.assert_array_equal(
    per_example_loss(apply_fn, variables, train),
    per_example_loss(apply_fn, variables, ds.x_train, ds.y_train),
  )
  assert sj.evaluate(apply_fn, variables, test) == sj.evaluate(
    apply_fn, variables, ds.x_test, ds.y_test
  )
  np.testing.assert_array_equal(
    predict_logits(apply_fn, variables, test), predict_logits(apply_fn, variables, ds.x_test)
  )
  opts = sap_options()
  streamed = sj.run_sap(
    apply_fn, variables, train, None, test, None, eval_splits={"test": test}, **opts
  )
  arrays = sj.run_sap(
    apply_fn,
    variables,
    ds.x_train,
    ds.y_train,
    ds.x_test,
    ds.y_test,
    eval_splits={"test": (ds.x_test, ds.y_test)},
    **opts,
  )
  np.testing.assert_array_equal(streamed.trusted_indices, arrays.trusted_indices)
  assert streamed.alpha == arrays.alpha
  np.testing.assert_array_equal(streamed.sweep.accuracies, arrays.sweep.accuracies)
  np.testing.assert_array_equal(
    streamed.sweep.splits["test"].accuracies, arrays.sweep.splits["test"].accuracies
  )
  for a, b in zip(_leaves(streamed.variables), _leaves(arrays.variables)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert streamed.layers == arrays.layers


def test_the_sweep_reads_each_split_once_for_the_whole_grid(folder):
  root, _, _, apply_fn, variables = folder
  train, test = folder_sources(root)
  val = CountingSource(test)
  stats = sj.activation_stats(apply_fn, variables, streaming.stats_batches(train, range(24), 16))
  decomposition = sj.decompose(variables, stats)
  sweep = sj.sweep_alpha(apply_fn, variables, decomposition, [1.0, 10.0, 1e3, 1e5], val, None)
  assert val.reads[0] == 0  # the first record's shape, for the model's output width
  assert sorted(val.reads[1:]) == list(range(len(test)))  # once, whatever the number of α
  # each α's accuracy is that of the model apply_alpha gives
  for a, acc in zip(sweep.alphas, sweep.accuracies):
    model = sj.apply_alpha(variables, decomposition, a)
    assert acc == sj.evaluate(apply_fn, model, test)["accuracy"]
  assert sweep.baseline_accuracy == sj.evaluate(apply_fn, variables, test)["accuracy"]


def test_alpha_chunks_bound_the_copies_and_give_the_same_scores(folder):
  root, _, _, apply_fn, variables = folder
  train, test = folder_sources(root)
  stats = sj.activation_stats(apply_fn, variables, streaming.stats_batches(train, range(24), 16))
  decomposition = sj.decompose(variables, stats)
  alphas = [1.0, 10.0, 1e3, 1e5, 1e6]
  whole = streaming.score_alphas(apply_fn, variables, decomposition, alphas, {"t": test})
  counted = CountingSource(test)
  chunked = streaming.score_alphas(
    apply_fn, variables, decomposition, alphas, {"t": counted}, alpha_chunk=2
  )
  np.testing.assert_array_equal(whole["t"].accuracies, chunked["t"].accuracies)
  assert whole["t"].baseline == chunked["t"].baseline
  assert len(counted.reads) == 1 + 3 * len(test)  # the first record's shape, ⌈5 / 2⌉ passes


@pytest.mark.parametrize("score", ["curvature", "curvature_published"])
@pytest.mark.parametrize("balanced", [False, True])
def test_curvature_scores_and_their_trusted_sets_equal_the_arrays(folder, score, balanced):
  from sap_jax.trusted import trust_scores, trusted_set

  root, ds, _, apply_fn, variables = folder
  train, _ = folder_sources(root)
  kw = dict(score=score, batch_size=40, seed=5)
  np.testing.assert_array_equal(
    streaming.scores(apply_fn, variables, train, **kw),
    trust_scores(apply_fn, variables, ds.x_train, ds.y_train, **kw),
  )
  got = trusted_set(apply_fn, variables, train, None, 12, class_balanced=balanced, **kw)
  want = trusted_set(apply_fn, variables, ds.x_train, ds.y_train, 12, class_balanced=balanced, **kw)
  np.testing.assert_array_equal(got, want)


def test_the_trusted_set_of_a_stream_holds_k_scores_not_n(folder, monkeypatch):
  root, ds, _, apply_fn, variables = folder
  train, _ = folder_sources(root)
  sizes = []
  real_update = streaming.LowestK.update

  def update(self, *args):
    real_update(self, *args)
    sizes.append(len(self.overall[0]) + sum(len(s) for s, _ in self.by_class.values()))

  monkeypatch.setattr(streaming.LowestK, "update", update)
  got = streaming.lowest_loss(apply_fn, variables, train, 5, batch_size=8)
  assert len(sizes) == 8 and max(sizes) <= 6 * 4  # overall + 3 classes, never N = 63
  losses = per_example_loss(apply_fn, variables, ds.x_train, ds.y_train)
  np.testing.assert_array_equal(got, sj.select_trusted(losses, ds.y_train, 5))


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda f, t: sj.run_sap(*f, t, None, t, None, n_trusted=9, score="nope"), "Unknown score"),
    (
      lambda f, t: sj.run_sap(*f, t, None, t, None, n_trusted=9, tune="sideways"),
      "tune must be one of",
    ),
    (
      lambda f, t: sj.run_sap(
        *f, t, None, t, None, n_trusted=9, tune="per_layer", tune_options={"folds": 1}
      ),
      "folds must be an integer ≥ 2",
    ),
    (
      lambda f, t: sj.run_sap(*f, t, None, t, None, n_trusted=9, tune_options={"steps": 3}),
      "without tune",
    ),
    (lambda f, t: sj.run_sap(*f, t, np.zeros(3), t, None), "carries its own labels"),
    (lambda f, t: sj.run_sap(*f, t, None, np.zeros((3, 8, 8, 3)), None), "x_val must be one"),
    (lambda f, t: sj.run_sap(*f, t, None, t, None, n_trusted=999), "exceeds the 63"),
    (lambda f, t: sj.run_sap(*f, t, None, t, None, alphas=[]), "alphas is empty"),
    (
      lambda f, t: sj.run_sap(*f, t, None, t, None, eval_splits={"x": (1, 2)}),
      "every eval split is a source",
    ),
  ],
)
def test_source_runs_refuse_bad_options_before_any_read(folder, call, message):
  root, _, _, apply_fn, variables = folder
  train, _ = folder_sources(root)
  counted = CountingSource(train)
  with pytest.raises(ValueError, match=message):
    call((apply_fn, variables), counted)
  assert counted.reads == [] or counted.reads == [0]  # at most the first record's shape


def test_two_processes_read_only_their_own_samples_and_equal_one_process(folder, tmp_path):
  root, ds, model, apply_fn, variables = folder
  work = tmp_path
  write_folder(work / "folder")
  (work / "variables.msgpack").write_bytes(serialization.msgpack_serialize(variables))
  run_process_group(["tests.stream_hosts_child", str(work)], work / "logs")
  procs = [json.loads((work / f"proc{i}.json").read_text()) for i in range(2)]
  # Every process reads record 0 for the model's shapes (a probe); beyond that, no sample
  # is read by both processes within a pass.
  for key in ("score_reads", "stats_reads"):
    mine = [set(p[key]) for p in procs]
    assert mine[0] & mine[1] <= {0}, key
  every = set(procs[0]["score_reads"]) | set(procs[1]["score_reads"])
  assert every == set(range(len(ds.x_train)))  # the scores read every sample
  trusted = set(procs[0]["trusted"])
  assert set(procs[0]["stats_reads"]) | set(procs[1]["stats_reads"]) == trusted
  # the sweep reads the test split once for the grid and the choice, each half once
  halves = [p["test_reads"][1:] for p in procs]
  assert not set(halves[0]) & set(halves[1]) - {0}
  # training: 2 epochs × 3 full batches of 16 (a fresh order each epoch); each process
  # reads its 8 samples of each batch, after its 2 shape probes
  epochs = [[p["train_reads"][2 + 24 * e : 2 + 24 * (e + 1)] for p in procs] for e in range(2)]
  for p in procs:
    assert p["train_reads"][:2] == [0, 0] and len(p["train_reads"]) == 2 + 2 * 24
  for first, second in epochs:
    assert not set(first) & set(second) and len(set(first) | set(second)) == 48
  # the results equal one process on the arrays
  train, test = folder_sources(root)
  one = sj.run_sap(
    apply_fn, variables, ds.x_train, ds.y_train, ds.x_test, ds.y_test, **sap_options()
  )
  for p in procs:
    assert p["trusted"] == one.trusted_indices.tolist()
    assert p["alpha"] == one.alpha
    assert p["val"] == one.sweep.accuracies.tolist()
    for a, b in zip(p["corrected"], _leaves(one.variables)):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5)
    # data-parallel training over 8 devices equals one device to float tolerance
    for a, b in zip(p["trained"], _leaves(variables)):
      np.testing.assert_allclose(np.asarray(a), b, rtol=1e-3, atol=1e-4)


def test_per_layer_tuning_over_a_source_equals_its_arrays(folder):
  """``run_sap(tune="per_layer")`` over sources: `tune_alpha` on the validation source
  (folds read by index) from the grid's best α gives the arrays' per-layer α and model.
  The validation labels are the model's at α = 3 (so that α wins the grid and is tuned)."""
  root, ds, _, apply_fn, variables = folder
  train, _ = folder_sources(root)
  options = {**sap_options(), "alphas": [3.0, 300.0]}
  at3 = sj.run_sap(apply_fn, variables, ds.x_train, ds.y_train, ds.x_test, ds.y_test, **options)
  y_val = np.argmax(
    predict_logits(apply_fn, sj.apply_alpha(variables, at3.decomposition, 3.0), ds.x_test), -1
  )
  options["tune"], options["tune_options"] = "per_layer", {"steps": 5, "folds": 3}
  val = ArraySource(ds.x_test, y_val)
  got = sj.run_sap(apply_fn, variables, train, None, val, None, **options)
  want = sj.run_sap(apply_fn, variables, ds.x_train, ds.y_train, ds.x_test, y_val, **options)
  assert got.alpha == want.alpha == 3.0 and got.tuning is not None
  for name, alpha in want.tuning.alpha.items():
    np.testing.assert_allclose(got.tuning.alpha[name], alpha, rtol=1e-4)
  for a, b in zip(_leaves(got.variables), _leaves(want.variables)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_array_source_runs_equal_array_runs(mlp):
  apply_fn, variables, x, y = mlp
  src = ArraySource(x, y)
  a = sj.run_sap(apply_fn, variables, src, None, src, None, n_trusted=20, alphas=[1.0, 1e9])
  b = sj.run_sap(apply_fn, variables, x, y, x, y, n_trusted=20, alphas=[1.0, 1e9])
  np.testing.assert_array_equal(a.trusted_indices, b.trusted_indices)
  assert a.alpha == b.alpha is None


def test_nnx_training_and_sap_over_a_source_equal_arrays():
  from flax import nnx

  import sap_jax.nnx
  from sap_jax.train_config import TrainConfig

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 8, (3, 3), rngs=rngs)
      self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
      return self.head(jax.nn.relu(self.conv(x)).mean((1, 2)))

  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 6, 6, 1)).astype(np.float32)
  y = rng.integers(0, 10, 200)
  config = TrainConfig(epochs=2, batch_size=32)
  a = sap_jax.nnx.train_model(Net(nnx.Rngs(0)), x, y, config, progress=False)
  b = sap_jax.nnx.train_model(Net(nnx.Rngs(0)), ArraySource(x, y), None, config, progress=False)
  for u, v in zip(_leaves(nnx.state(a.model, nnx.Param)), _leaves(nnx.state(b.model, nnx.Param))):
    np.testing.assert_array_equal(u, v)
  arrays = sap_jax.nnx.run_sap(a.model, x, y, x[:80], y[:80], n_trusted=40, alphas=[10.0, 1e3])
  streamed = sap_jax.nnx.run_sap(
    a.model,
    ArraySource(x, y),
    None,
    ArraySource(x[:80], y[:80]),
    None,
    n_trusted=40,
    alphas=[10.0, 1e3],
  )
  np.testing.assert_array_equal(arrays.trusted_indices, streamed.trusted_indices)
  assert arrays.alpha == streamed.alpha
  np.testing.assert_array_equal(arrays.sweep.accuracies, streamed.sweep.accuracies)
  assert arrays.skipped == streamed.skipped


def test_sensitivity_and_influence_over_a_source_equal_arrays(mlp):
  from sap_jax.influence import trusted_influence
  from sap_jax.sensitivity import alpha_sensitivity

  apply_fn, variables, x, y = mlp
  y = y.copy()
  y[::3] = (y[::3] + 1) % 4
  stats = sj.activation_stats(apply_fn, variables, [x[:30]])
  decomposition = sj.decompose(variables, stats, method="eigh")
  a = alpha_sensitivity(apply_fn, variables, decomposition, x, y, 30.0, batch_size=24)
  b = alpha_sensitivity(
    apply_fn, variables, decomposition, ArraySource(x, y), None, 30.0, batch_size=24
  )
  np.testing.assert_allclose(b.loss, a.loss, rtol=1e-6)
  for p in a.per_layer:
    np.testing.assert_allclose(b.per_layer[p], a.per_layer[p], rtol=1e-5, atol=1e-9)
  i = trusted_influence(apply_fn, variables, decomposition, x[:30], x, y, 30.0)
  j = trusted_influence(apply_fn, variables, decomposition, x[:30], ArraySource(x, y), None, 30.0)
  for p in i.per_layer:
    np.testing.assert_allclose(j.per_layer[p], i.per_layer[p], rtol=1e-4, atol=1e-9)


def test_a_training_source_that_changes_length_between_epochs_is_refused(mlp):
  from sap_jax.train_config import TrainConfig
  from tests.conftest import SmallMLP

  apply_fn, variables, x, y = mlp

  class Growing(ArraySource):
    epochs = 0

    def __len__(self):
      return super().__len__() + (1 if Growing.epochs else 0)

  src = Growing(x, y)
  logged = []

  def grow(entry):
    logged.append(entry)
    Growing.epochs += 1

  with pytest.raises(ValueError, match=r"changed length between two passes \(64 → 65"):
    train_model(
      SmallMLP(), src, None, TrainConfig(epochs=3, batch_size=16), progress=False, log_fn=grow
    )
  assert len(logged) == 1
