"""Zeroth-order and policy-gradient estimators against the closed forms of spec 5.5-5.6.

Statistical checks use fixed keys and one jitted, vmapped call per check. Tolerances:
- a mean vector `m` of `N` i.i.d. estimates with covariance `C` (closed form) is tested
  with `T = N (m - g)^T C^+ (m - g)`, asymptotically chi-square with `rank(C)` degrees
  of freedom; we require `T < 18.47`, the 0.999 quantile of chi-square(4) (every
  problem below has rank 4);
- an empirical variance trace `mean_i ||g_i - m||^2` is compared with its closed form
  within 4 standard errors, the standard error being `std_i ||g_i - m||^2 / sqrt(N)`
  (CLT band from the estimates' own fourth moment: they are far from Gaussian, so the
  Gaussian chi-square band `sqrt(2/N)` would understate it).
"""

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtricks import estimators

CHI2_4_999 = 18.47  # 0.999 quantile of the chi-square distribution with 4 d.o.f.
NUM_ESTIMATES = 2**15
D = 4
SIGMA = 0.5

_RNG = np.random.default_rng(0)
_M = _RNG.normal(size=(D, D))
A = (_M + _M.T) / 2
B = _RNG.normal(size=D)
C = 0.7
X = _RNG.normal(size=D)
GRAD = A @ X + B


def quadratic(x):
    return 0.5 * x @ jnp.asarray(A, x.dtype) @ x + jnp.asarray(B, x.dtype) @ x + C


F0 = 0.5 * X @ A @ X + B @ X + C


def _curvature_moment():
    """`E[(u^T A u)^2 u u^T]` for u ~ N(0, I) (spec 5.5)."""
    t = np.trace(A)
    return (t**2 + 2 * np.trace(A @ A)) * np.eye(D) + 4 * t * A + 8 * A @ A


def _gaussian_central_cov():
    return GRAD @ GRAD * np.eye(D) + np.outer(GRAD, GRAD)


def _gaussian_forward_cov(delta=0.0):
    """Forward difference with the constant baseline `f(x) - delta` (spec 5.5, items 2-5)."""
    return (
        _gaussian_central_cov()
        + SIGMA**2 / 4 * _curvature_moment()
        + delta**2 / SIGMA**2 * np.eye(D)
        + delta * (np.trace(A) * np.eye(D) + 2 * A)
    )


def _sphere_cov(antithetic):
    central = D / (D + 2) * (GRAD @ GRAD * np.eye(D) + 2 * np.outer(GRAD, GRAD)) - np.outer(
        GRAD, GRAD
    )
    if antithetic:
        return central
    return central + D * SIGMA**2 / (4 * (D + 2) * (D + 4)) * _curvature_moment()


def _rademacher_cov(antithetic):
    """Exact covariance by enumerating the 2^d sign vectors (a second, independent way)."""
    def f(x):
        return 0.5 * x @ A @ x + B @ x + C

    signs = np.array(list(itertools.product((-1.0, 1.0), repeat=D)))
    if antithetic:
        values = [(f(X + SIGMA * s) - f(X - SIGMA * s)) / (2 * SIGMA) for s in signs]
    else:
        values = [(f(X + SIGMA * s) - F0) / SIGMA for s in signs]
    estimates = np.array(values)[:, None] * signs
    np.testing.assert_allclose(estimates.mean(0), GRAD, rtol=1e-12)  # exact on quadratics
    return np.cov(estimates.T, bias=True)


# The optimal constant baseline b* = f(x) + (d+2) sigma^2 trA / (2d) (spec 5.5, item 5).
OPTIMAL_DELTA = -(D + 2) * SIGMA**2 * np.trace(A) / (2 * D)

CASES = {
    "gaussian_forward": ({"antithetic": False}, _gaussian_forward_cov),
    "gaussian_antithetic": ({}, _gaussian_central_cov),
    "gaussian_raw": ({"antithetic": False, "baseline": False}, lambda: _gaussian_forward_cov(F0)),
    "gaussian_optimal": (
        {"antithetic": False, "baseline": "optimal"},
        lambda: _gaussian_forward_cov(OPTIMAL_DELTA),
    ),
    "sphere_forward": ({"antithetic": False, "directions": "sphere"}, lambda: _sphere_cov(False)),
    "sphere_antithetic": ({"directions": "sphere"}, lambda: _sphere_cov(True)),
    "rademacher_forward": (
        {"antithetic": False, "directions": "rademacher"},
        lambda: _rademacher_cov(False),
    ),
    "rademacher_antithetic": ({"directions": "rademacher"}, lambda: _rademacher_cov(True)),
}


@functools.cache
def _zeroth_order_samples(case):
    options, _ = CASES[case]
    num_samples = NUM_ESTIMATES * (2 if options.get("antithetic", True) else 1)
    sample = jax.jit(
        lambda key: estimators.zeroth_order_grad(
            quadratic, jnp.asarray(X, jnp.float32), key, num_samples=num_samples,
            sigma=SIGMA, return_samples=True, **options,
        )
    )
    return np.asarray(sample(jax.random.key(7)), np.float64)


def _hotelling(samples, mean, cov):
    diff = samples.mean(0) - mean
    return len(samples) * diff @ np.linalg.pinv(cov) @ diff


def _trace_band(samples):
    """Empirical variance trace and its standard error."""
    squared = np.sum((samples - samples.mean(0)) ** 2, axis=1)
    return squared.mean(), squared.std() / math.sqrt(len(samples))


@pytest.mark.parametrize("case", CASES)
def test_zeroth_order_estimators_are_unbiased_on_a_quadratic(case):
    samples = _zeroth_order_samples(case)
    assert _hotelling(samples, GRAD, CASES[case][1]()) < CHI2_4_999


@pytest.mark.parametrize("case", CASES)
def test_zeroth_order_variance_matches_the_closed_form(case):
    trace, standard_error = _trace_band(_zeroth_order_samples(case))
    assert abs(trace - np.trace(CASES[case][1]())) < 4 * standard_error


def test_closed_form_traces_of_spec_5_5():
    # The spec's trace formulas against the full covariances used above.
    t, t2, g2 = np.trace(A), np.trace(A @ A), GRAD @ GRAD
    forward = (D + 1) * g2 + SIGMA**2 / 4 * (D + 4) * (t**2 + 2 * t2)
    np.testing.assert_allclose(np.trace(_gaussian_forward_cov()), forward)
    sphere = (D - 1) * g2 + D * SIGMA**2 / (4 * (D + 2)) * (t**2 + 2 * t2)
    np.testing.assert_allclose(np.trace(_sphere_cov(False)), sphere)
    off_diagonal = np.sum(A**2) - np.sum(np.diag(A) ** 2)
    spsa = (D - 1) * g2 + D * SIGMA**2 / 4 * (t**2 + 2 * off_diagonal)
    np.testing.assert_allclose(np.trace(_rademacher_cov(False)), spsa)
    optimal = forward - (D + 2) ** 2 * SIGMA**2 * t**2 / (4 * D)
    np.testing.assert_allclose(np.trace(_gaussian_forward_cov(OPTIMAL_DELTA)), optimal)


def test_forward_estimate_of_abs_is_the_smoothed_gradient():
    # f = |x| (d = 1, not differentiable at 0): grad f_sigma(x) = 2 Phi(x / sigma) - 1.
    x, sigma = 0.3, 0.5
    samples = jax.jit(
        lambda key: estimators.zeroth_order_grad(
            lambda w: jnp.abs(w[0]), jnp.array([x]), key, num_samples=NUM_ESTIMATES,
            sigma=sigma, antithetic=False, return_samples=True,
        )
    )(jax.random.key(3))
    samples = np.asarray(samples[:, 0], np.float64)
    exact = math.erf(x / sigma / math.sqrt(2))  # = 2 Phi(x / sigma) - 1
    # 4 standard errors of the mean.
    assert abs(samples.mean() - exact) < 4 * samples.std() / math.sqrt(len(samples))


def test_antithetic_differences_cancel_the_even_part():
    # f(x + s u) = b^T x + s b^T u + even(u): the central difference keeps b^T u only.
    def with_even_part(w):
        return jnp.asarray(B, w.dtype) @ w + jnp.sum((w - X) ** 2) ** 2 + jnp.cos(w - X).sum()

    def linear(w):
        return jnp.asarray(B, w.dtype) @ w

    @jax.jit
    def gaps():
        def samples(fn, **options):
            return estimators.zeroth_order_grad(
                fn, jnp.asarray(X, jnp.float32), jax.random.key(5), num_samples=512,
                sigma=SIGMA, return_samples=True, **options,
            )

        central = samples(with_even_part) - samples(linear)
        forward = samples(with_even_part, antithetic=False) - samples(linear, antithetic=False)
        return central, forward

    central_gap, forward_gap = gaps()
    np.testing.assert_allclose(central_gap, 0.0, atol=1e-4)
    assert np.max(np.abs(forward_gap)) > 1.0


# Categorical policy over K = 5 classes, the logits being the parameters (spec 5.6).
LOGITS = np.array([0.5, -1.0, 0.0, 1.5, -0.3])
REWARDS = np.array([1.0, 0.0, 2.0, 0.5, 3.0]) + 10.0  # the offset makes baselines matter
PROBS = np.exp(LOGITS) / np.exp(LOGITS).sum()
PG_EXACT = PROBS * (REWARDS - PROBS @ REWARDS)
SCORES = np.eye(5) - PROBS  # row y: e_y - p


def _categorical_pg(key, num_samples, baseline, return_samples=False):
    sample_fn, log_prob_fn = estimators.categorical_policy(lambda logits: logits)
    return estimators.policy_gradient(
        sample_fn, log_prob_fn, lambda y: jnp.asarray(REWARDS, jnp.float32)[y],
        jnp.asarray(LOGITS, jnp.float32), key, num_samples=num_samples, baseline=baseline,
        return_samples=return_samples,
    )


def test_policy_gradient_without_baseline_matches_the_closed_form():
    samples = np.asarray(
        jax.jit(lambda k: _categorical_pg(k, NUM_ESTIMATES, None, True))(jax.random.key(11)),
        np.float64,
    )
    second_moment = np.einsum("y,yi,yj->ij", PROBS * REWARDS**2, SCORES, SCORES)
    cov = second_moment - np.outer(PG_EXACT, PG_EXACT)
    assert np.linalg.matrix_rank(cov) == 4  # scores sum to zero: rank K - 1
    assert _hotelling(samples, PG_EXACT, cov) < CHI2_4_999
    trace, standard_error = _trace_band(samples)
    assert abs(trace - np.trace(cov)) < 4 * standard_error


@functools.cache
def _repeated_pg(baseline, num_samples=4):
    """NUM_ESTIMATES independent estimates, each from `num_samples` samples."""
    keys = jax.random.split(jax.random.key(13), NUM_ESTIMATES)
    run = jax.jit(jax.vmap(lambda k: _categorical_pg(k, num_samples, baseline)))
    return np.asarray(run(keys), np.float64)


def test_leave_one_out_is_unbiased_and_the_mean_baseline_is_shrunk():
    # Spec 5.6: E[mean baseline] = (1 - 1/n) grad J, RLOO = n/(n-1) x mean baseline.
    n = 4
    rloo, mean = _repeated_pg("leave_one_out"), _repeated_pg("mean")
    np.testing.assert_allclose(rloo, n / (n - 1) * mean, rtol=1e-4, atol=1e-5)
    rloo_cov = np.cov(rloo.T)
    assert _hotelling(rloo, PG_EXACT, rloo_cov) < CHI2_4_999
    mean_cov = np.cov(mean.T)
    assert _hotelling(mean, (1 - 1 / n) * PG_EXACT, mean_cov) < CHI2_4_999
    assert _hotelling(mean, PG_EXACT, mean_cov) > 10 * CHI2_4_999  # the bias is visible


def test_baselines_reduce_the_policy_gradient_variance():
    traces = {b: _trace_band(_repeated_pg(b)) for b in (None, "leave_one_out", "optimal")}
    no_baseline, no_baseline_se = traces[None]
    for baseline in ("leave_one_out", "optimal"):
        trace, standard_error = traces[baseline]
        assert trace + 4 * standard_error < (no_baseline - 4 * no_baseline_se) / 10
    assert _hotelling(_repeated_pg("optimal"), PG_EXACT, np.cov(_repeated_pg("optimal").T)) < (
        CHI2_4_999
    )


def _non_smooth(params):
    return jnp.sum(jnp.abs(params["w"])) + jnp.sum(jnp.floor(3 * params["b"]))


PARAMS = {"w": jnp.array([[0.3, -1.2], [0.7, 0.1]]), "b": jnp.array([0.2, -0.4, 1.1])}


@pytest.mark.parametrize(
    ("zo_baseline", "pg_baseline"),
    [(True, float(_non_smooth(PARAMS))), (False, None), ("optimal", "optimal")],
)
def test_gaussian_policy_gradient_equals_zeroth_order_sample_by_sample(zo_baseline, pg_baseline):
    # Spec 5.3: REINFORCE on N(x, sigma^2 I) == forward ZO with Gaussian directions.
    options = {"num_samples": 64, "return_samples": True}

    @jax.jit
    def both(key):
        zo = estimators.zeroth_order_grad(
            _non_smooth, PARAMS, key, sigma=0.3, antithetic=False, baseline=zo_baseline,
            **options,
        )
        pg = estimators.policy_gradient(
            *estimators.gaussian_policy(0.3), _non_smooth, PARAMS, key, baseline=pg_baseline,
            **options,
        )
        return zo, pg

    zo, pg = both(jax.random.key(17))
    # Equal up to rounding: the policy's score (w - x)/sigma^2 recovers u/sigma to ~1 ulp.
    for leaf_zo, leaf_pg in zip(jax.tree.leaves(zo), jax.tree.leaves(pg), strict=True):
        np.testing.assert_allclose(leaf_zo, leaf_pg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{}, {"antithetic": False, "baseline": "optimal"}, {"directions": "sphere"}],
)
def test_chunked_and_unchunked_give_the_same_estimate(options):
    def estimate(chunk_size=None, return_samples=False):
        return estimators.zeroth_order_grad(
            _non_smooth, PARAMS, jax.random.key(19), num_samples=96, sigma=0.3,
            chunk_size=chunk_size, return_samples=return_samples, **options,
        )

    @jax.jit
    def variants():
        return (
            estimate(), estimate(chunk_size=24), estimate(chunk_size=24, return_samples=True),
            estimate(return_samples=True),
        )

    reference, chunked, chunked_samples, samples = variants()
    close = functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5)
    jax.tree.map(close, chunked, reference)
    jax.tree.map(lambda s, r: close(s.mean(0), r), chunked_samples, reference)
    jax.tree.map(close, chunked_samples, samples)


def test_jitted_and_eager_give_the_same_estimate():
    def estimate(key):
        return estimators.zeroth_order_grad(
            _non_smooth, PARAMS, key, num_samples=16, sigma=0.3, chunk_size=8
        )

    key = jax.random.key(19)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
        jax.jit(estimate)(key), estimate(key),
    )


def test_policy_gradient_one_pass_equals_the_mean_of_its_samples():
    estimate, samples = jax.jit(
        lambda key: (
            _categorical_pg(key, 64, "leave_one_out"),
            _categorical_pg(key, 64, "leave_one_out", return_samples=True),
        )
    )(jax.random.key(23))
    np.testing.assert_allclose(estimate, samples.mean(0), rtol=1e-5, atol=1e-6)


def test_sharded_samples_give_the_single_device_numbers():
    mesh = Mesh(np.array(jax.devices()[:4]), ("samples",))
    sample_sharding = NamedSharding(mesh, PartitionSpec("samples"))
    replicated = jax.device_put(PARAMS, NamedSharding(mesh, PartitionSpec()))
    key = jax.random.key(29)
    sample_fn, log_prob_fn = estimators.gaussian_policy(0.3)

    def both(params, sharding):
        zo = estimators.zeroth_order_grad(
            _non_smooth, params, key, num_samples=64, sigma=0.3, sample_sharding=sharding
        )
        pg = estimators.policy_gradient(
            sample_fn, log_prob_fn, _non_smooth, params, key, num_samples=64,
            sample_sharding=sharding,
        )
        return zo, pg

    sharded = jax.jit(both, static_argnums=1)(replicated, sample_sharding)
    single = jax.jit(both, static_argnums=1)(PARAMS, None)
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), sharded, single
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 7}, "num_samples must be even"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"chunk_size": 3}, "chunk_size"),
        ({"chunk_size": 5, "antithetic": False}, "chunk_size"),
        ({"directions": "uniform"}, "directions"),
        ({"baseline": "mean", "antithetic": False}, "baseline"),
        ({"fn": lambda w: w}, "output of fn"),
    ],
)
def test_zeroth_order_rejects_bad_arguments(options, message):
    arguments = {"fn": lambda w: jnp.sum(w**2), "num_samples": 8, "sigma": 0.1} | options
    with pytest.raises(ValueError, match=message):
        estimators.zeroth_order_grad(
            arguments.pop("fn"), jnp.ones(3), jax.random.key(0), **arguments
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 1, "baseline": "leave_one_out"}, "num_samples"),
        ({"baseline": "median"}, "baseline"),
        ({"reward_fn": lambda y: jnp.ones(2)}, "output of reward_fn"),
    ],
)
def test_policy_gradient_rejects_bad_arguments(options, message):
    sample_fn, log_prob_fn = estimators.categorical_policy(lambda logits: logits)
    arguments = {"reward_fn": lambda y: y.astype(jnp.float32), "num_samples": 8} | options
    with pytest.raises(ValueError, match=message):
        estimators.policy_gradient(
            sample_fn, log_prob_fn, arguments.pop("reward_fn"), jnp.zeros(3),
            jax.random.key(0), **arguments,
        )


def test_gaussian_policy_rejects_a_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma"):
        estimators.gaussian_policy(0.0)
