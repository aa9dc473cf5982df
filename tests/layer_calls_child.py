"""Child program of tests/test_layer_calls.py: ``calls`` on a batch sharded over devices.

``python -m tests.layer_calls_child``: run with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``; prints (json) the statistics of
`tests.test_layer_calls`' model with ``calls={"head": 1, "embed": 0}`` on its batch
sharded over the 4 devices (each device's partial sums, combined once), and the Gram
matrices of the chosen calls' inputs computed by hand (float64 numpy).
"""

from __future__ import annotations

import json

import numpy as np


def main() -> None:
  import jax

  import sap_jax
  from sap_jax import sharding as shd
  from tests.test_layer_calls import APPLY, VARIABLES, X, call_inputs

  assert jax.device_count() == 4
  x = shd.shard_batch(X, shd.data_mesh())
  assert shd.data_axis_of(x) is not None
  stats = sap_jax.activation_stats(APPLY, VARIABLES, [x], calls={"head": 1, "embed": 0})
  inputs = call_inputs(X)
  hand = {"head": inputs["head"][1], "embed": inputs["embed"][0], "out": inputs["out"][0]}
  print(
    json.dumps(
      {
        "order": ["/".join(p) for p in stats],
        "gram": {"/".join(p): np.asarray(s.gram).tolist() for p, s in stats.items()},
        "count": {"/".join(p): float(s.count) for p, s in stats.items()},
        "hand": {k: (r.T @ r).tolist() for k, r in hand.items()},
        "rows": {k: len(r) for k, r in hand.items()},
      }
    )
  )


if __name__ == "__main__":
  main()
