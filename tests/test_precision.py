"""Tests of the rounding-floor predictions of `jaxtricks.estimators._precision`.

Rounding is applied with `jax.lax.reduce_precision` on values computed in float32, not by
computing in bfloat16: XLA's default `--xla_allow_excess_precision=true` keeps bfloat16
arithmetic inside a fusion in float32, so which roundings happen (and whether a floor
shows at all) depends on fusion decisions, even on the batch size. `reduce_precision`
rounds exactly once, where it is written, whatever XLA fuses: the tests are
deterministic and measure exactly the rounding the prediction models. The measured
variance where rounding dominates, on the precision benchmark's objective, is checked in
`benchmarks/tests/test_precision_benchmark.py`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxtricks import estimators
from jaxtricks.estimators._precision import (
    LOG_UNIFORM_FACTOR,
    rounding_floor_sigma,
    rounding_variance,
)

# Two-sided z-test at level 0.001 per comparison.
Z_CRITICAL = float(scipy.stats.norm.ppf(1 - 0.001 / 2))


def _variance_trace(f, x, *, num_samples, sigma, directions, repeats, antithetic=True):
    """Variance trace of `repeats` estimates and its standard error, in float64."""
    estimate = jax.jit(jax.vmap(lambda k: estimators.zeroth_order_grad(
        f, x, k, num_samples=num_samples, sigma=sigma, antithetic=antithetic,
        directions=directions)))
    values = np.asarray(estimate(jax.random.split(jax.random.key(0), repeats)), np.float64)
    deviations = np.sum((values - values.mean(0)) ** 2, axis=1)
    return deviations.mean() * repeats / (repeats - 1), deviations.std() / math.sqrt(repeats)


def test_rounding_is_negligible_in_float32_at_sigma_0_1():
    d, num_samples, sigma = 10, 16, 0.1
    a = jnp.linspace(0.5, 2.0, d)
    x = jnp.full((d,), 0.1)

    def f(w):  # a large offset: |f| >> ||g|| |x|
        return 0.5 * jnp.sum(a * w * w) + jnp.sum(w) + 1000.0

    g = np.asarray(a * x + 1.0, np.float64)
    g2 = float(g @ g)
    intrinsic = (d + 1) * g2 / (num_samples // 2)
    rounding = float(rounding_variance(
        sigma, 1000.0, math.sqrt(g2), jnp.float32, num_params=d,
        num_directions=num_samples // 2, param_scale=0.1))
    assert rounding < 0.01 * intrinsic
    measured, se = _variance_trace(f, x, num_samples=num_samples, sigma=sigma,
                                   directions="gaussian", repeats=1024)
    assert abs(measured - intrinsic - rounding) / se < Z_CRITICAL


def test_log_uniform_mantissa_gives_eps_squared_over_32_ln_2():
    """Monte Carlo of the rounding of log-uniform bfloat16 inputs, against the constant."""
    rng = np.random.default_rng(0)
    y = jnp.asarray(np.exp2(rng.uniform(0.0, 8.0, 200_000)), jnp.float32)
    relative = np.asarray((jax.lax.reduce_precision(y, 8, 7) - y) / y, np.float64) ** 2
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    expected = LOG_UNIFORM_FACTOR * eps**2
    se = relative.std() / math.sqrt(relative.size)
    assert abs(relative.mean() - expected) / se < Z_CRITICAL


@pytest.mark.parametrize("directions", ["gaussian", "sphere", "rademacher"])
@pytest.mark.parametrize("antithetic", [True, False])
def test_floor_sigma_makes_rounding_equal_ratio_times_intrinsic(directions, antithetic):
    d, ratio, grad_norm = 50, 0.3, 2.0
    options = {"num_params": d, "antithetic": antithetic, "directions": directions,
               "param_scale": 3.0}
    sigma = rounding_floor_sigma(1000.0, grad_norm, jnp.float16, ratio=ratio, **options)
    rounding = rounding_variance(sigma, 1000.0, grad_norm, jnp.float16, **options)
    intrinsic = (d + 1 if directions == "gaussian" else d - 1) * grad_norm**2
    np.testing.assert_allclose(float(rounding), ratio * intrinsic, rtol=1e-5)
    # one final rounding, Gaussian antithetic: sigma ~= h / (sqrt(24) ||g||).
    if directions == "gaussian" and antithetic:
        bare = rounding_floor_sigma(1000.0, grad_norm, jnp.float16, num_params=d)
        h = 512 * float(jnp.finfo(jnp.float16).eps)
        np.testing.assert_allclose(float(bare), h / math.sqrt(24) / grad_norm
                                   * math.sqrt(d / (d + 1)), rtol=1e-5)


def test_rounding_floor_sigma_works_under_jit_and_vmap():
    floors = jax.jit(jax.vmap(lambda v: rounding_floor_sigma(
        v, 1.0, jnp.bfloat16, num_params=10)))(jnp.array([1.5, 3.0]))
    # 1.5 and 3.0 lie in consecutive binades: spacings, and floors, a factor 2 apart.
    np.testing.assert_allclose(float(floors[1] / floors[0]), 2.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sigma": 0.0}, "sigma"),
        ({"value": float("nan")}, "value"),
        ({"grad_norm": -1.0}, "grad_norm"),
        ({"dtype": jnp.int32}, "dtype"),
        ({"dtype": None}, "dtype must be a floating dtype, got None"),
        ({"value": 1e39}, "value must lie in"),
        ({"value": 1e5, "value_dtype": jnp.float16}, "value must lie in"),
        ({"sigma": jnp.ones(2)}, "sigma must have shape"),
        ({"value_dtype": "int8"}, "value_dtype"),
        ({"num_params": 0}, "num_params"),
        ({"num_directions": 2.0}, "num_directions"),
        ({"directions": "normal"}, "directions"),
        ({"num_roundings": -1.0}, "num_roundings"),
        ({"param_scale": -0.1}, "param_scale"),
    ],
)
def test_rounding_variance_rejects_bad_input(kwargs, match):
    arguments = {"sigma": 0.01, "value": 2.0, "grad_norm": 1.0, "dtype": jnp.bfloat16,
                 "num_params": 10, **kwargs}
    with pytest.raises(ValueError, match=match):
        rounding_variance(**arguments)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_a_value_of_exactly_zero_has_the_subnormal_spacing(dtype):
    # At 0 the spacing of the dtype is its smallest subnormal, not eps (a value near 1):
    # one output rounding of variance h^2 / 12, halved for an antithetic pair.
    tiny = float(jnp.finfo(dtype).smallest_subnormal)
    variance = rounding_variance(1.0, 0.0, 1.0, dtype, num_params=10)
    # (float32's, 2^-149 squared, underflows to 0 in the float32 result.)
    np.testing.assert_allclose(float(variance), 10 * tiny**2 / 12 / 2, rtol=1e-6, atol=1e-40)
    near_one = rounding_variance(1.0, 1.0, 1.0, dtype, num_params=10)
    assert float(variance) < 1e-6 * float(near_one)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grad_norm": 0.0}, "grad_norm"),
        ({"ratio": 0.0}, "ratio"),
        ({"num_params": 1, "directions": "sphere"}, "num_params"),
        ({"dtype": bool}, "dtype"),
    ],
)
def test_rounding_floor_sigma_rejects_bad_input(kwargs, match):
    arguments = {"value": 2.0, "grad_norm": 1.0, "dtype": jnp.bfloat16, "num_params": 10,
                 **kwargs}
    with pytest.raises(ValueError, match=match):
        rounding_floor_sigma(**arguments)

