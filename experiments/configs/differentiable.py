"""Differentiable SAP on the Table 1 settings: grid α vs per-layer α learned by gradient
(`sap_jax.tune_alpha`) vs the oracle α, per-layer sensitivity, trusted-sample influence.

Command (resumable: finished models are skipped; vanilla checkpoints are those of
experiments/configs/table1.py, trained once and shared):

    python -m experiments.differentiable experiments/configs/differentiable.py \
        --checkpoint-dir experiments/results/_work/checkpoints

Per vanilla model of Table 1 (digits CNN and MNIST-1D CNN; Sym/Asym 10 %/25 %; seeds
12484, 32087, 35416): SAP with α chosen from the grid on the noisy validation split;
then per-layer α tuned from that α on the same noisy split with each of ``TUNE``'s
guards, and on the clean validation labels (a reference, †); the per-layer
sensitivity ∂L/∂ log α_l along the grid (noisy and clean validation labels); the
influence ∂L/∂wᵢ of every trusted sample at the chosen α, its precision at k against
the corruption mask (against the trusted set's noise rate and against ranking by
training loss), and SAP recomputed without the k trusted samples ranked worst (against
dropping k at random). Results: experiments/results/differentiable/.
"""

BASE_CONFIG = "experiments/configs/table1.py"
"""The config whose vanilla models (setups, noises, seeds, training) are corrected."""

N_TRUSTED = 1000  # clipped to N/2, as in Table 1

TUNE = {
  # K-fold early stopping alone.
  "tuned (CV)": {"folds": 5, "steps": 50, "learning_rate": 0.1, "penalty": 0.0},
  # K-fold early stopping, and a pull towards the shared log α (weight chosen by the
  # same CV among two).
  "tuned (CV + penalty)": {
    "folds": 5,
    "steps": 50,
    "learning_rate": 0.1,
    "penalty": (0.1, 1.0),
  },
}
"""Guards of `tune_alpha` compared (row label → keyword arguments)."""

CLEAN_TUNE = "tuned (CV)"
"""The guard used for the reference tuned on the clean validation labels."""

INFLUENCE_K = (10, 25, 50, 100)
"""k of the precision-at-k table."""

DROP_K = (25, 100)
"""Samples dropped from the random trusted set (ranked worst by influence, or at random)
before recomputing."""
