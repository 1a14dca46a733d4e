"""The precision benchmark's dithered objective, measured as the benchmark measures it,
against `rounding_variance`: the rounding-dominated regime and the floor rule."""

from __future__ import annotations

import math

import jax.numpy as jnp
import pytest
import scipy.stats

from benchmarks import precision
from jaxtricks.estimators._precision import rounding_floor_sigma, rounding_variance

# Two-sided z-test at level 0.001 per comparison.
Z_CRITICAL = float(scipy.stats.norm.ppf(1 - 0.001 / 2))
D, NUM_EXAMPLES = 8, 16
NUM_DIRECTIONS = precision.NUM_SAMPLES // 2  # antithetic
GRAD_NORM = 0.1 * math.sqrt(D)


def _measured(dtype, sigma, directions, x):
    """Variance trace of 2048 antithetic estimates on the objective, its s.e., sigma used."""
    f = precision.dithered_objective(D, NUM_EXAMPLES, jnp.dtype(dtype).name, sigma)
    ((measured, se, used),) = precision._variance_traces(
        f, x, (sigma,), True, 2048, directions)
    return measured, se, used


@pytest.mark.parametrize(
    ("dtype", "sigma", "directions"),
    [(jnp.bfloat16, 0.1, "gaussian"), (jnp.float16, 0.01 * math.sqrt(8), "sphere")],
)
def test_prediction_matches_measured_variance_where_rounding_dominates(
        dtype, sigma, directions):
    # A mean of 16 per-example values, each rounded, whose roundings stay dithered at
    # `sigma`; gradient 0.1 everywhere (the objective's docstring).
    measured, se, used = _measured(dtype, sigma, directions, jnp.zeros(D))
    intrinsic = (D + 1 if directions == "gaussian" else D - 1) * GRAD_NORM**2 / NUM_DIRECTIONS
    rounding = float(rounding_variance(
        used, 640.0, GRAD_NORM, jnp.float32, num_params=D, num_directions=NUM_DIRECTIONS,
        directions=directions, value_dtype=dtype, num_roundings=1 / NUM_EXAMPLES))
    assert rounding > 20 * intrinsic  # rounding dominates
    z = (measured - rounding - intrinsic) / se
    assert abs(z) < Z_CRITICAL, (measured, rounding, intrinsic, se)


def test_the_floor_rule_picks_the_sigma_of_a_bfloat16_estimate_and_mezos_default_is_below():
    """The bfloat16 check with the rule: at `rounding_floor_sigma(ratio=r)` the measured
    variance is `(1 + r)` times the estimator's own (on the benchmark's objective, whose
    roundings stay dithered at that sigma); at MeZO's default `sigma = 1e-3` the rule
    puts rounding at over 10^5 times the estimator's own variance."""
    ratio = 0.5
    intrinsic = (D + 1) * GRAD_NORM**2 / NUM_DIRECTIONS
    options = {"num_params": D, "value_dtype": jnp.bfloat16, "num_roundings": 1 / NUM_EXAMPLES}
    sigma = float(rounding_floor_sigma(640.0, GRAD_NORM, jnp.bfloat16, ratio=ratio, **options))
    measured, se, _ = _measured(jnp.bfloat16, sigma, "gaussian", jnp.zeros(D, jnp.bfloat16))
    assert abs(measured - (1 + ratio) * intrinsic) / se < Z_CRITICAL, (sigma, measured)
    at_default = rounding_variance(1e-3, 640.0, GRAD_NORM, jnp.bfloat16,
                                   num_directions=NUM_DIRECTIONS, **options)
    assert float(at_default) > 1e5 * intrinsic
