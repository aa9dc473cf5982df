"""Tests for sap_jax.metrics: the figures of a noisy-label model, on known values."""

import json
import types
from pathlib import Path

import numpy as np
import pytest

from sap_jax import metrics


def _logits_are_inputs(variables, x):
  """A "model" whose logits are its inputs times a scale: its predictions are known."""
  return x * variables["params"]["scale"]


VARIABLES = {"params": {"scale": np.float32(2.0)}}


def _one_hot(classes, k=3):
  return np.eye(k, dtype=np.float32)[np.asarray(classes)]


def _splits(noise_mask):
  # Predictions are the argmax of the inputs: train [0, 1, 2, 2], val [0, 1], test [0, 1, 2, 0].
  return types.SimpleNamespace(
    x_train=_one_hot([0, 1, 2, 2]),
    y_train=np.array([0, 1, 2, 1], np.int32),  # samples 1 and 3 carry corrupted labels
    noise_mask=np.asarray(noise_mask, bool),
    x_val=_one_hot([0, 1]),
    y_val=np.array([1, 1], np.int32),
    y_val_clean=np.array([0, 1], np.int32),
    x_test=_one_hot([0, 1, 2, 0]),
    y_test=np.array([0, 1, 0, 0], np.int32),
  )


def test_split_metrics_known_values():
  m = metrics.split_metrics(_logits_are_inputs, VARIABLES, _splits([0, 1, 0, 1]))
  assert tuple(m) == metrics.METRIC_KEYS
  assert m["test_accuracy"] == pytest.approx(0.75)
  assert m["val_accuracy_noisy"] == pytest.approx(0.5)
  assert m["val_accuracy_clean"] == pytest.approx(1.0)
  # Of the corrupted samples 1 and 3, the model predicts sample 1 AS its wrong label.
  assert m["fit_noisy"] == pytest.approx(0.5)


def test_fit_noisy_is_none_without_label_noise():
  m = metrics.split_metrics(_logits_are_inputs, VARIABLES, _splits([0, 0, 0, 0]))
  assert m["fit_noisy"] is None
  assert m["test_accuracy"] == pytest.approx(0.75)


def test_record_keys_match_the_committed_experiment_records():
  cells = sorted(Path(__file__).resolve().parents[1].glob("experiments/results/*/cells/*.json"))
  if not cells:
    pytest.skip("no committed experiment records")
  record = json.loads(cells[0].read_text(encoding="utf-8"))
  assert set(metrics.METRIC_KEYS) <= set(record)
  assert set(metrics.METRIC_KEYS) <= set(record["vanilla"])
