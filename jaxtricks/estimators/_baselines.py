"""Scalar baselines (control variates) of the score-function estimators (spec 5.1, 5.2, 5.6).

For samples `y_i` with rewards `r_i` and scores `s_i`, the estimate is
`(1/n) sum_i (r_i - b_i) s_i`. It stays unbiased when `b_i` does not depend on `y_i`
(since `E[s_i] = 0`): a constant, or a statistic of the other samples only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtricks._src import checks

SAMPLE_BASELINES = ("mean", "leave_one_out", "optimal")


def check_baseline(baseline, num_samples: int) -> None:
    """Checks a policy-gradient baseline: None, a name of `SAMPLE_BASELINES`, a scalar."""
    if baseline is None:
        return
    if isinstance(baseline, str):
        checks.check_choice("baseline", baseline, (None, *SAMPLE_BASELINES))
        if baseline in ("leave_one_out", "optimal"):
            checks.check_positive_int("num_samples", num_samples, minimum=2)
        return
    checks.check_shape("baseline", jnp.shape(baseline), ())


def centred_rewards(rewards: jax.Array, baseline, sq_norms: jax.Array | None = None):
    """`r_i - b_i` for every sample.

    Args:
        rewards: `[n]` rewards (function values) of the samples.
        baseline: None (`b = 0`); a scalar (`b`, e.g. `f(x)`); "mean" (`b = mean_j r_j`,
            biased by the factor `1 - 1/n`, spec 5.6); "leave_one_out" (`b_i = mean_{j!=i}
            r_j`, RLOO, unbiased); "optimal": the variance-minimising scalar baseline
            `b* = E[r ||s||^2] / E[||s||^2]` (spec 5.1, 5.2), estimated from the other
            samples, `b_i = sum_{j!=i} r_j q_j / sum_{j!=i} q_j` with `q_j = ||s_j||^2`,
            so that it stays unbiased.
        sq_norms: `[n]` squared norms `q_j` of the scores (or of the directions);
            needed by "optimal" only.

    Returns:
        `[n]` centred rewards.
    """
    if baseline is None:
        return rewards
    if isinstance(baseline, str):
        if baseline == "mean":
            return rewards - jnp.mean(rewards)
        weights = jnp.ones_like(rewards) if baseline == "leave_one_out" else sq_norms
        return rewards - leave_one_out_mean(rewards, weights)
    return rewards - baseline


def leave_one_out_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """`sum_{j!=i} w_j v_j / sum_{j!=i} w_j` for every `i`."""
    weighted_total = jnp.sum(weights * values)
    total_weight = jnp.sum(weights)
    return (weighted_total - weights * values) / (total_weight - weights)
