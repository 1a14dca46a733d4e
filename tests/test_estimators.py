"""Zeroth-order and policy-gradient estimators against their closed-form moments.

Statistical checks use fixed keys and one jitted, vmapped call per check. Tolerances:
- a mean vector `m` of `N` i.i.d. estimates with covariance `C` is tested in the span of
  `C`, the subspace the estimator lives in (policy-gradient scores sum to zero, so `C`
  is singular): with `C = V diag(lambda) V^T` restricted to the eigenvalues above
  `RANK_TOLERANCE` times the largest, `T = N sum_k (V_k^T (m - g))^2 / lambda_k`, and
  the part of `m - g` outside the span must be float rounding only. With `C` exact,
  `T` is chi-square with `rank` degrees of freedom; with `C` estimated from the same
  samples, Hotelling's `T^2 ~ rank (N-1)/(N-rank) F(rank, N-rank)`. We require `T`
  below the 0.999 quantile, from scipy.stats;
- an empirical variance trace `mean_i ||g_i - m||^2` is compared with its closed form
  within 4 standard errors, the standard error being `std_i ||g_i - m||^2 / sqrt(N)`
  (CLT band from the estimates' own fourth moment: they are far from Gaussian, so the
  Gaussian chi-square band `sqrt(2/N)` would understate it).
"""

import functools
import inspect
import itertools
import math

import _moments as moments
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import optax
import pytest
from _compat import enable_x64
from _sharded_estimates import estimates as sharded_estimates
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtricks import estimators
from jaxtricks.estimators import _baselines

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
    """`E[(u^T A u)^2 u u^T]` for u ~ N(0, I) (Isserlis' theorem)."""
    t = np.trace(A)
    return (t**2 + 2 * np.trace(A @ A)) * np.eye(D) + 4 * t * A + 8 * A @ A


def _gaussian_central_cov():
    return GRAD @ GRAD * np.eye(D) + np.outer(GRAD, GRAD)


def _gaussian_forward_cov(delta=0.0):
    """Forward difference with the constant baseline `f(x) - delta`."""
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


# The optimal constant baseline b* = f(x) + (d+2) sigma^2 trA / (2d).
OPTIMAL_DELTA = -(D + 2) * SIGMA**2 * np.trace(A) / (2 * D)

CASES = {
    "gaussian_forward": ({"antithetic": False}, _gaussian_forward_cov),
    "gaussian_antithetic": ({}, _gaussian_central_cov),
    "gaussian_raw": ({"antithetic": False, "baseline": None}, lambda: _gaussian_forward_cov(F0)),
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


@pytest.mark.parametrize("case", CASES)
def test_zeroth_order_estimators_are_unbiased_on_a_quadratic(case):
    samples = _zeroth_order_samples(case)
    statistic, critical, rank = moments.hotelling(samples, GRAD, CASES[case][1]())
    assert rank == D
    assert statistic < critical


@pytest.mark.parametrize("case", CASES)
def test_zeroth_order_variance_matches_the_closed_form(case):
    trace, standard_error = moments.trace_band(_zeroth_order_samples(case))
    assert abs(trace - np.trace(CASES[case][1]())) < 4 * standard_error


def test_closed_form_traces_match_the_full_covariances():
    # The closed-form trace formulas against the full covariances used above.
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


# Categorical policy over K = 5 classes, the logits being the parameters.
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
    statistic, critical, rank = moments.hotelling(samples, PG_EXACT, cov)
    assert rank == 4  # scores sum to zero: rank K - 1
    assert statistic < critical
    trace, standard_error = moments.trace_band(samples)
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
    moments.assert_mean_is(rloo, PG_EXACT)
    moments.assert_mean_is(mean, (1 - 1 / n) * PG_EXACT)
    statistic, critical, rank = moments.hotelling(mean, PG_EXACT, np.cov(mean.T), estimated=True)
    assert rank == 4
    assert statistic > 10 * critical  # the bias is visible


def test_baselines_reduce_the_policy_gradient_variance():
    traces = {b: moments.trace_band(_repeated_pg(b)) for b in (None, "leave_one_out", "optimal")}
    no_baseline, no_baseline_se = traces[None]
    for baseline in ("leave_one_out", "optimal"):
        trace, standard_error = traces[baseline]
        assert trace + 4 * standard_error < (no_baseline - 4 * no_baseline_se) / 10
    moments.assert_mean_is(_repeated_pg("optimal"), PG_EXACT)


def _non_smooth(params):
    return jnp.sum(jnp.abs(params["w"])) + jnp.sum(jnp.floor(3 * params["b"]))


PARAMS = {"w": jnp.array([[0.3, -1.2], [0.7, 0.1]]), "b": jnp.array([0.2, -0.4, 1.1])}


@pytest.mark.parametrize(
    ("zo_baseline", "pg_baseline"),
    [
        ("default", float(_non_smooth(PARAMS))),  # ZO's default, "unperturbed": f(x)
        (None, None),
        ("mean", "mean"),
        ("leave_one_out", "leave_one_out"),
        ("optimal", "optimal"),
    ],
)
def test_gaussian_policy_gradient_equals_zeroth_order_sample_by_sample(zo_baseline, pg_baseline):
    # REINFORCE on N(x, sigma^2 I) == forward ZO with Gaussian directions (Su, 2020),
    # for every baseline of the shared vocabulary.
    options = {"num_samples": 64, "return_samples": True}
    zo_options = {} if isinstance(zo_baseline, str) and zo_baseline == "default" else {
        "baseline": zo_baseline
    }

    @jax.jit
    def both(key):
        zo = estimators.zeroth_order_grad(
            _non_smooth, PARAMS, key, sigma=0.3, antithetic=False, **zo_options, **options,
        )
        pg = estimators.policy_gradient(
            *estimators.gaussian_policy(0.3), _non_smooth, PARAMS, key, baseline=pg_baseline,
            **options,
        )
        return zo, pg

    zo, pg = both(jax.random.key(17))
    assert inspect.signature(estimators.zeroth_order_grad).parameters["baseline"].default == (
        "unperturbed"
    )
    # Equal up to rounding: the policy's score (w - x)/sigma^2 recovers u/sigma to ~1 ulp.
    for leaf_zo, leaf_pg in zip(jax.tree.leaves(zo), jax.tree.leaves(pg), strict=True):
        np.testing.assert_allclose(leaf_zo, leaf_pg, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [{}, {"antithetic": False, "baseline": "optimal"}, {"directions": "sphere"}],
)
@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.parametrize("axis_type", ["auto", "explicit"])
@pytest.mark.slow
def test_sharded_samples_give_the_single_device_numbers(axis_type):
    # jax.make_mesh gives explicit axes by default in recent JAX; a Mesh, automatic ones.
    types = {"auto": jax.sharding.AxisType.Auto, "explicit": jax.sharding.AxisType.Explicit}
    mesh = Mesh(np.array(jax.devices()[:4]), ("samples",), axis_types=(types[axis_type],))
    sample_sharding = NamedSharding(mesh, PartitionSpec("samples"))
    # Both estimators on a non-smooth objective, as the two-process test runs them.
    jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6),
        sharded_estimates(sample_sharding), sharded_estimates(None),
    )


@pytest.mark.parametrize("num_samples", [12, 6])
def test_a_mesh_that_does_not_divide_the_directions_is_refused_naming_both(num_samples):
    # 4 devices: 12 antithetic samples are 6 directions, 6 forward ones are 6 too.
    mesh = Mesh(np.array(jax.devices()[:4]), ("samples",))
    with pytest.raises(ValueError, match="sample_sharding splits the directions over 4"):
        estimators.zeroth_order_grad(
            _non_smooth, PARAMS, jax.random.key(0), num_samples=num_samples,
            antithetic=num_samples == 12,
            sample_sharding=NamedSharding(mesh, PartitionSpec("samples")))


def test_the_update_takes_an_optax_schedule_at_its_step():
    schedule = optax.cosine_decay_schedule(0.3, 10)
    step = jax.jit(lambda x, count: estimators.zeroth_order_update(
        _smooth_flat, x, jax.random.key(2), learning_rate=schedule, step=count,
        num_samples=4)[0])
    for count in (0, 7):
        expected = estimators.zeroth_order_update(
            _smooth_flat, FLAT, jax.random.key(2), learning_rate=float(schedule(count)),
            num_samples=4)[0]
        np.testing.assert_allclose(step(FLAT, count), expected, rtol=1e-6, atol=1e-6)
    for options, message in (({"learning_rate": schedule}, "step must be given"),
                             ({"learning_rate": 0.1, "step": 3}, "step is used with a schedule"),
                             ({"learning_rate": jnp.ones(2)}, "learning_rate must have shape")):
        with pytest.raises(ValueError, match=message):
            estimators.zeroth_order_update(_smooth_flat, FLAT, jax.random.key(2),
                                           num_samples=4, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 7}, "num_samples must be even"),
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": jnp.full(3, 0.1)}, "sigma must have shape"),
        ({"chunk_size": 3}, "chunk_size"),
        ({"chunk_size": 5, "antithetic": False}, "chunk_size"),
        ({"directions": "uniform"}, "directions"),
        ({"baseline": "median", "antithetic": False}, "baseline must be one of"),
        ({"baseline": jnp.ones(2), "antithetic": False}, "shape"),
        ({"baseline": "optimal", "antithetic": False, "num_samples": 1}, "num_samples"),
        ({"fn": lambda w: w}, "output of fn"),
        ({"key": jnp.zeros(2)}, "key must be a jax.random.key"),
        ({"key": jax.random.split(jax.random.key(0), 2)}, "key must be a single key"),
    ],
)
def test_zeroth_order_rejects_bad_arguments(options, message):
    arguments = {
        "fn": lambda w: jnp.sum(w**2), "key": jax.random.key(0), "num_samples": 8,
        "sigma": 0.1,
    } | options
    with pytest.raises(ValueError, match=message):
        estimators.zeroth_order_grad(
            arguments.pop("fn"), jnp.ones(3), arguments.pop("key"), **arguments
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 0}, "num_samples"),
        ({"num_samples": 1, "baseline": "leave_one_out"}, "num_samples"),
        ({"baseline": "median"}, "baseline must be one of"),
        ({"baseline": "unperturbed"}, "zeroth_order_grad only"),
        ({"baseline": jnp.zeros(3)}, "shape"),
        ({"reward_fn": lambda y: jnp.ones(2)}, "output of reward_fn"),
        ({"key": jnp.zeros(2)}, "key must be a jax.random.key"),
    ],
)
def test_policy_gradient_rejects_bad_arguments(options, message):
    sample_fn, log_prob_fn = estimators.categorical_policy(lambda logits: logits)
    arguments = {
        "reward_fn": lambda y: y.astype(jnp.float32), "key": jax.random.key(0),
        "num_samples": 8,
    } | options
    with pytest.raises(ValueError, match=message):
        estimators.policy_gradient(
            sample_fn, log_prob_fn, arguments.pop("reward_fn"), jnp.zeros(3),
            arguments.pop("key"), **arguments,
        )


def test_gaussian_policy_rejects_a_non_positive_sigma():
    with pytest.raises(ValueError, match="sigma"):
        estimators.gaussian_policy(0.0)


# ---------------------------------------------------------------- one baseline vocabulary
@pytest.mark.parametrize("boolean", [True, False, np.True_, jnp.array(True)])
@pytest.mark.parametrize("estimator", ["zeroth_order_grad", "policy_gradient"])
def test_boolean_baselines_are_refused_with_what_they_meant(boolean, estimator):
    # Formerly ZO read True as f(x) and False as none, while PG read True as the constant 1.
    with pytest.raises(ValueError, match="boolean") as raised:
        if estimator == "zeroth_order_grad":
            estimators.zeroth_order_grad(
                lambda w: jnp.sum(w**2), jnp.ones(3), jax.random.key(0), num_samples=8,
                antithetic=False, baseline=boolean,
            )
        else:
            estimators.policy_gradient(
                *estimators.gaussian_policy(0.1), lambda w: jnp.sum(w**2), jnp.ones(3),
                jax.random.key(0), num_samples=8, baseline=boolean,
            )
    message = str(raised.value)
    assert "'unperturbed' (b = f(params))" in message
    assert "baseline=False is None" in message
    accepted = _baselines.BASELINES if estimator == "zeroth_order_grad" else (
        _baselines.POLICY_BASELINES
    )
    assert str(accepted) in message


def test_the_vocabulary_is_shared_and_dispatched_from_one_table():
    assert _baselines.BASELINES == (None, "unperturbed", "mean", "leave_one_out", "optimal")
    shared = tuple(name for name in _baselines.BASELINES if name != "unperturbed")
    assert shared == _baselines.POLICY_BASELINES
    assert tuple(_baselines._RULES) == _baselines.BASELINES
    rewards, sq_norms = jnp.array([1.0, 2.0, 4.0]), jnp.array([1.0, 3.0, 0.5])
    expected = {  # numpy, written out
        None: [1.0, 2.0, 4.0],
        "unperturbed": [1.0 - 7.0, 2.0 - 7.0, 4.0 - 7.0],
        "mean": [1 - 7 / 3, 2 - 7 / 3, 4 - 7 / 3],
        "leave_one_out": [1 - 3.0, 2 - 2.5, 4 - 1.5],
        "optimal": [1 - 8 / 3.5, 2 - 3 / 1.5, 4 - 7 / 4],
    }
    for name, centred in expected.items():
        np.testing.assert_allclose(
            _baselines.centred_rewards(rewards, name, sq_norms, lambda: 7.0), centred,
            rtol=1e-6,
        )


# ------------------------------------------------------------------ typed and legacy keys
def _smooth(params):
    return jnp.sum(params["w"] ** 2) + jnp.sum(jnp.sin(params["b"]))


def _sample_sharding():
    return NamedSharding(Mesh(np.array(jax.devices()[:4]), ("samples",)), PartitionSpec("samples"))


# Each direction kind, antithetic and forward, one of the two plain and the other with
# chunks, per-sample outputs and sharded samples together.
KEY_CONFIGURATIONS = [
    {"antithetic": antithetic, "directions": directions, "chunk_size": 4 if extras else None,
     "return_samples": extras, "sharded": extras}
    for index, (antithetic, directions) in enumerate(
        itertools.product((True, False), ("gaussian", "sphere", "rademacher"))
    )
    for extras in [index % 2 == 1]
]


@pytest.mark.slow
def test_zeroth_order_gives_the_same_numbers_for_typed_and_legacy_keys():
    sharding = _sample_sharding()

    def estimate(key, sharded, **options):
        return estimators.zeroth_order_grad(
            _smooth, PARAMS, key, num_samples=8, sigma=0.1,
            sample_sharding=sharding if sharded else None, **options,
        )

    @jax.jit
    def every_configuration(legacy_key):
        # The typed key made in the program from the same bits: one argument, and the
        # two estimates' programs share everything up to the key's type.
        typed_key = jax.random.wrap_key_data(legacy_key)
        return [
            (estimate(typed_key, **configuration), estimate(legacy_key, **configuration))
            for configuration in KEY_CONFIGURATIONS
        ]

    for seed in (0, 5):
        results = every_configuration(jax.random.PRNGKey(seed))
        for configuration, (typed, legacy) in zip(KEY_CONFIGURATIONS, results, strict=True):
            # The same random bits; the arithmetic, in one program, may round differently
            # by an ulp where XLA fuses the two copies differently.
            for leaf_t, leaf_l in zip(jax.tree.leaves(typed), jax.tree.leaves(legacy), strict=True):
                np.testing.assert_allclose(leaf_t, leaf_l, rtol=1e-6, atol=1e-6 * np.max(
                    np.abs(leaf_l)), err_msg=str(configuration))


def _categorical_rewards(y):
    return jnp.asarray(REWARDS, jnp.float32)[y]


KEYED_FUNCTIONS = {  # name -> fn(key): every function of the package that takes a key
    "zeroth_order_grad": lambda key: estimators.zeroth_order_grad(
        _smooth, PARAMS, key, num_samples=8, sigma=0.1, antithetic=False, baseline="optimal"
    ),
    "policy_gradient (gaussian)": lambda key: estimators.policy_gradient(
        *estimators.gaussian_policy(0.2), _smooth, PARAMS, key, num_samples=8,
        sample_sharding=_sample_sharding(),
    ),
    "policy_gradient (categorical)": lambda key: estimators.policy_gradient(
        *estimators.categorical_policy(lambda logits: logits), _categorical_rewards,
        jnp.asarray(LOGITS, jnp.float32), key, num_samples=8, return_samples=True,
    ),
    "gaussian_policy sample_fn": lambda key: estimators.gaussian_policy(0.2)[0](PARAMS, key),
    "categorical_policy sample_fn": lambda key: estimators.categorical_policy(
        lambda logits: jnp.tile(logits, (3, 1))
    )[0](jnp.asarray(LOGITS, jnp.float32), key),
}


@pytest.mark.parametrize("name", KEYED_FUNCTIONS)
def test_batches_of_typed_and_legacy_keys_give_the_same_numbers_under_vmap(name):
    function = jax.jit(jax.vmap(KEYED_FUNCTIONS[name]))
    typed = function(jax.random.split(jax.random.key(3), 3))
    legacy = function(jax.random.split(jax.random.PRNGKey(3), 3))
    single = jax.eval_shape(KEYED_FUNCTIONS[name], jax.random.PRNGKey(3))
    for leaf_t, leaf_l in zip(jax.tree.leaves(typed), jax.tree.leaves(legacy), strict=True):
        np.testing.assert_array_equal(leaf_t, leaf_l)
    for leaf_t, leaf_s in zip(jax.tree.leaves(typed), jax.tree.leaves(single), strict=True):
        assert leaf_t.shape == (3, *leaf_s.shape)


@pytest.mark.parametrize("name", KEYED_FUNCTIONS)
@pytest.mark.parametrize("bad_key", [jnp.zeros(2), jnp.zeros(2, jnp.int32), None, "key"])
def test_a_non_key_array_is_refused_with_a_clear_message(name, bad_key):
    message = r"key must be a jax\.random\.key or a jax\.random\.PRNGKey"
    with pytest.raises(ValueError, match=message):
        KEYED_FUNCTIONS[name](bad_key)


@pytest.mark.slow
def test_a_four_word_prng_key_is_an_rbg_key_under_the_rbg_default():
    # `jax.random.PRNGKey(0)` is uint32[4] under jax_default_prng_impl="rbg"; a 2-word
    # raw key stays a threefry key whatever the default.
    estimate = functools.partial(estimators.zeroth_order_grad, quadratic,
                                 jnp.asarray(X, jnp.float32), num_samples=4)
    previous = jax.config.jax_default_prng_impl
    try:
        jax.config.update("jax_default_prng_impl", "rbg")
        four_words, two_words = estimate(jax.random.PRNGKey(0)), estimate(
            jnp.zeros(2, jnp.uint32))
    finally:
        jax.config.update("jax_default_prng_impl", previous)
    np.testing.assert_array_equal(four_words, estimate(jax.random.key(0, impl="rbg")))
    np.testing.assert_array_equal(two_words, estimate(jax.random.PRNGKey(0)))


@pytest.mark.slow
def test_empty_leaves_count_and_integer_values_are_cast_to_float():
    params = {"a": jnp.asarray(X, jnp.float32), "empty": jnp.zeros((0, 3))}
    for estimate in (
        estimators.zeroth_order_grad(lambda p: quadratic(p["a"]), params, jax.random.key(0),
                                     num_samples=4),
        estimators.zeroth_order_grad(lambda p: quadratic(p["a"]), params, jax.random.key(0),
                                     num_samples=4, chunk_size=2),
        estimators.forward_gradient(lambda p: quadratic(p["a"]), params, jax.random.key(0),
                                    num_samples=4),
    ):
        assert estimate["empty"].shape == (0, 3)
        assert np.all(np.isfinite(estimate["a"]))
    # A count or an indicator is a float value: the estimate of a step function.
    x = jnp.asarray(X, jnp.float32)
    step = estimators.zeroth_order_grad(lambda p: (p[0] > X[0]).astype(jnp.int32), x,
                                        jax.random.key(1), num_samples=8, sigma=0.5)
    indicator = estimators.zeroth_order_grad(lambda p: p[0] > X[0], x, jax.random.key(1),
                                             num_samples=8, sigma=0.5)
    np.testing.assert_array_equal(step, indicator)


@pytest.mark.parametrize(
    ("estimate", "message"),
    [(lambda x: estimators.zeroth_order_grad(lambda p: jnp.sum(p).astype(jnp.complex64) * 1j,
                                             x, jax.random.key(0), num_samples=2), "real"),
     (lambda x: estimators.zeroth_order_update(lambda p: jnp.sum(p).astype(jnp.complex64) * 1j,
                                               x, jax.random.key(0), learning_rate=0.1,
                                               num_samples=2), "real"),
     (lambda x: estimators.forward_gradient(lambda p: jnp.argmax(p), x, jax.random.key(0),
                                            num_samples=2), "real floating"),
     (lambda x: estimators.gaussian_policy(jnp.full(3, 0.1)), "sigma must have shape"),
     (lambda x: estimators.policy_gradient(
         *estimators.gaussian_policy(0.1), jnp.sum, x, jax.random.key(0), num_samples=6,
         sample_sharding=NamedSharding(Mesh(np.array(jax.devices()[:4]), ("s",)),
                                       PartitionSpec("s"))), "sample_sharding")],
    ids=["complex fn", "complex fn, update", "integer fn, jvp", "vector sigma", "mesh"],
)
def test_outputs_and_arguments_that_cannot_be_estimated_are_refused(estimate, message):
    with pytest.raises(ValueError, match=message):
        estimate(jnp.asarray(X, jnp.float32))


def test_an_action_outside_the_classes_has_no_log_probability():
    _, log_prob_fn = estimators.categorical_policy(lambda p: p)
    logits = jnp.log(jnp.array([0.5, 0.3, 0.2]))
    for action in (-1, 3):
        assert np.isnan(log_prob_fn(logits, jnp.array(action)))
    np.testing.assert_allclose(log_prob_fn(logits, jnp.array(2)), math.log(0.2), rtol=1e-6)


# ------------------------------------------------------------------------ low precision
def _float32_quadratic(x):
    # The objective in float32 (as in mixed precision) of the params as stored: the
    # barrier keeps XLA from fusing away their rounding to x.dtype (excess precision),
    # as a matmul reading them would.
    return quadratic(jax.lax.optimization_barrier(x).astype(jnp.float32))


OFFSET = 1000.0  # exact in float32; `w - OFFSET` is exact there too (Sterbenz)


def _offset_quadratic(x):
    return quadratic(x - OFFSET)


X_LOW = X + 2.0  # |x_j| in [1.3, 3.4]: in bfloat16, x + 1e-3 u rounds back to x
PRECISION_CASES = {  # name -> (fn, params, options); the default sigma = 1e-3 unless given
    "bfloat16 antithetic": (_float32_quadratic, jnp.asarray(X_LOW, jnp.bfloat16), {}),
    "bfloat16 forward": (_float32_quadratic, jnp.asarray(X_LOW, jnp.bfloat16),
                         {"antithetic": False}),
    "bfloat16 sphere": (_float32_quadratic, jnp.asarray(X_LOW, jnp.bfloat16),
                        {"directions": "sphere"}),
    "float16 antithetic": (_float32_quadratic, jnp.asarray(X_LOW, jnp.float16), {}),
    "float32 at 1e3, sigma 1e-9": (_offset_quadratic, jnp.asarray(X + OFFSET, jnp.float32),
                                   {"sigma": 1e-9, "antithetic": False}),
}


def _exact_gradient(fn, params):
    point = np.asarray(params.astype(jnp.float32), np.float64)
    return A @ (point - (OFFSET if fn is _offset_quadratic else 0.0)) + B


@pytest.mark.parametrize("case", PRECISION_CASES)
def test_low_precision_params_give_the_exact_gradient_not_zero(case):
    # Formerly x + sigma u == x in bfloat16 (and float32 at 1e3 with sigma = 1e-9): 0.
    fn, params, options = PRECISION_CASES[case]
    samples = jax.jit(
        lambda x: estimators.zeroth_order_grad(
            fn, x, jax.random.key(31), num_samples=2**13, return_samples=True, **options
        )
    )(params)
    samples = np.asarray(samples, np.float64)
    assert np.all(np.abs(samples.mean(0)) > 0)
    moments.assert_mean_is(samples, _exact_gradient(fn, params))


def test_the_gaussian_policy_resolves_bfloat16_params_too():
    params = jnp.asarray(X_LOW, jnp.bfloat16)
    samples = jax.jit(
        lambda x: estimators.policy_gradient(
            *estimators.gaussian_policy(1e-3), _float32_quadratic, x, jax.random.key(37),
            num_samples=2**13, return_samples=True,
        )
    )(params)
    moments.assert_mean_is(
        np.asarray(samples, np.float64), _exact_gradient(_float32_quadratic, params))


@pytest.mark.parametrize(
    ("dtype", "directions"),
    [(jnp.bfloat16, "gaussian"), (jnp.float16, "rademacher"), (jnp.bfloat16, "sphere")],
)
def test_sigma_is_raised_to_four_spacings_of_the_largest_parameter(dtype, directions):
    params = {"a": jnp.asarray(X, dtype), "b": jnp.asarray([0.25, -3.0], dtype)}
    spacings = 4 * float(jnp.finfo(dtype).eps) * 3.0  # max |x_j| = 3 (|X| < 1.4)
    floor = spacings * (math.sqrt(6) if directions == "sphere" else 1.0)

    def estimate(sigma):
        return estimators.zeroth_order_grad(
            lambda p: _float32_quadratic(p["a"]) + jnp.sum(p["b"].astype(jnp.float32) ** 3),
            params, jax.random.key(41), num_samples=16, sigma=sigma, directions=directions,
            return_samples=True,  # in float32: differences of sigma^2 stay visible
        )

    at_default, at_floor, above = jax.jit(
        lambda: (estimate(1e-3), estimate(floor), estimate(2 * floor))
    )()
    jax.tree.map(np.testing.assert_array_equal, at_default, at_floor)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, at_floor, above)))


# --------------------------------------------------------------- function transformations
TRANSFORMED = {  # name -> estimate(params, key), params = the 7-vector `FLAT`
    "zo antithetic, chunked": lambda x, key: estimators.zeroth_order_grad(
        _smooth_flat, x, key, num_samples=16, sigma=0.1, chunk_size=8
    ),
    "zo forward, optimal, sphere": lambda x, key: estimators.zeroth_order_grad(
        _smooth_flat, x, key, num_samples=16, sigma=0.1, antithetic=False,
        baseline="optimal", directions="sphere",
    ),
    "zo update, forward, optimal": lambda x, key: estimators.zeroth_order_update(
        _smooth_flat, x, key, learning_rate=0.1, num_samples=4, sigma=0.1, antithetic=False,
        baseline="optimal",
    )[0],
    "zo orthogonal": lambda x, key: estimators.zeroth_order_grad(
        _smooth_flat, x, key, num_samples=14, sigma=0.1, directions="orthogonal",
    ),
    "forward gradient, low rank": lambda x, key: estimators.forward_gradient(
        _smooth_flat, x, key, num_samples=8, directions="low_rank", chunk_size=4,
    ),
    "pg gaussian, leave_one_out": lambda x, key: estimators.policy_gradient(
        *estimators.gaussian_policy(0.1), _smooth_flat, x, key, num_samples=16
    ),
    "pg categorical, optimal": lambda x, key: estimators.policy_gradient(
        *estimators.categorical_policy(lambda p: jnp.reshape(p[:6], (2, 3))),
        lambda y: jnp.sum(jnp.asarray([1.0, 3.0, -2.0])[y]),
        x, key, num_samples=16, baseline="optimal",
    ),
}
FLAT = jnp.array([0.3, -1.2, 0.7, 0.1, 0.2, -0.4, 1.1])


def _smooth_flat(x):
    return jnp.sum(x**2 * jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)) + jnp.sum(jnp.sin(x))


@pytest.mark.parametrize("name", TRANSFORMED)
@pytest.mark.slow
def test_estimators_commute_with_jit_vmap_checkpoint_and_scan(name):
    estimate = TRANSFORMED[name]
    key = jax.random.key(43)
    batch_keys = jnp.stack([key, jax.random.key(44)])
    batch_params = jnp.stack([FLAT, 2 * FLAT])

    def transformed():
        return {
            "checkpoint": jax.checkpoint(estimate)(FLAT, key),
            "vmap over keys": jax.vmap(estimate, in_axes=(None, 0))(FLAT, batch_keys),
            "vmap over params": jax.vmap(estimate, in_axes=(0, None))(batch_params, key),
            "scan over keys": jax.lax.scan(
                lambda carry, k: (carry, estimate(FLAT, k)), 0.0, batch_keys
            )[1],
        }

    def one_at_a_time():
        plain = estimate(FLAT, key)
        over_keys = jnp.stack([plain, estimate(FLAT, batch_keys[1])])
        return {
            "checkpoint": plain,
            "vmap over keys": over_keys,
            "vmap over params": jnp.stack([plain, estimate(batch_params[1], key)]),
            "scan over keys": over_keys,
        }

    results, expected = jax.jit(lambda: (transformed(), one_at_a_time()))()
    for transformation, result in results.items():
        scale = np.max(np.abs(expected[transformation]))
        np.testing.assert_allclose(  # float32 rounding, amplified by 1/sigma
            result, expected[transformation], rtol=1e-5, atol=1e-5 * scale,
            err_msg=transformation,
        )


@pytest.mark.parametrize("name", TRANSFORMED)
@pytest.mark.slow
def test_estimates_are_differentiable_in_params_in_forward_and_reverse_mode(name):
    # Against finite differences of the estimate (fixed key), float64.
    # The old policy_gradient stopped the gradient of its coefficients: jvp was 0.
    with enable_x64():
        x = jnp.asarray(FLAT, jnp.float64)
        estimate = jax.jit(functools.partial(TRANSFORMED[name], key=jax.random.key(47)))
        jax.test_util.check_grads(estimate, (x,), order=1, modes=("fwd", "rev"))
        jacobian = jax.jit(jax.jacfwd(estimate))(x)
        step = 1e-6
        differences = jnp.stack(
            [(estimate(x + step * e) - estimate(x - step * e)) / (2 * step) for e in jnp.eye(7)],
            axis=-1,
        )
        np.testing.assert_allclose(jacobian, differences, rtol=1e-5, atol=1e-5)
        assert np.max(np.abs(jacobian)) > 0.1
