"""Direction kinds against their closed forms, a user-defined kind through every estimator,
and the forward gradient against `jax.jacrev`.

On a quadratic `f(x) = x^T A x / 2 + b^T x` the central estimate of one direction is
exactly `(g . p) w` (the even terms cancel), `g = A x + b`, so its moments follow from
the direction's alone. For `m` directions of one orthogonal group (`u_i = ||g_i|| q_i`,
Haar frame, i.i.d. `chi_d` norms) the mean's variance trace is `((d + 2)/m - 1) ||g||^2`;
for one low-rank direction `E||g_hat||^2 = sum_L ||g_L||^2 (d + e_L)`, `e_L = 2` for a
Gaussian leaf and `2 (m + n + r + 1) / r` for an `[m, n]` leaf of rank `r` (Isserlis'
theorem; the derivation is in `LowRank`'s docstring). Tolerances as in
`tests/test_estimators.py`: Hotelling's test in the span of the covariance, traces within
4 standard errors.
"""

import dataclasses
import functools
import math

import _moments as moments
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _compat import enable_x64
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxtricks import estimators
from jaxtricks.estimators import _one_pass, _sampling

_RNG = np.random.default_rng(3)
SHAPES = {"b": (3,), "w": (3, 4)}  # d = 15; leaves in the order of jax.tree.leaves
D = 15
_M = _RNG.normal(size=(D, D))
A = (_M + _M.T) / 2
B = _RNG.normal(size=D)
X = {name: jnp.asarray(_RNG.normal(size=shape), jnp.float32) for name, shape in SHAPES.items()}
NUM_ESTIMATES = 2**13


def _flat(tree):
    return jnp.concatenate([leaf.reshape(-1) for leaf in jax.tree.leaves(tree)])


def quadratic(params):
    x = _flat(params)
    return 0.5 * x @ jnp.asarray(A, x.dtype) @ x + jnp.asarray(B, x.dtype) @ x


GRAD = A @ np.asarray(_flat(X), np.float64) + B
LEAF_GRADS = {"b": GRAD[:3], "w": GRAD[3:]}


def _estimates(directions, num_directions, key=None, **options):
    """`[NUM_ESTIMATES, d]` central estimates of `num_directions` directions each."""
    estimate = jax.jit(jax.vmap(lambda k: _flat(estimators.zeroth_order_grad(
        quadratic, X, k, num_samples=2 * num_directions, sigma=0.1, directions=directions,
        **options))))
    keys = jax.random.split(jax.random.key(11) if key is None else key, NUM_ESTIMATES)
    return np.asarray(estimate(keys), np.float64)


def _assert_trace_is(samples, expected):
    trace, standard_error = moments.trace_band(samples)
    assert abs(trace - expected) < 4 * standard_error, (trace, expected, standard_error)


def _low_rank_second_moment(rank):
    m, n = SHAPES["w"]
    excess = {"b": 2.0, "w": 2.0 * (m + n + rank + 1) / rank}
    return sum(LEAF_GRADS[name] @ LEAF_GRADS[name] * (D + excess[name]) for name in SHAPES)


# ---------------------------------------------------------------------- orthogonal
@pytest.mark.parametrize("num_directions", [5, 15, 30])
def test_orthogonal_groups_are_unbiased_with_the_closed_form_trace(num_directions):
    # Groups of min(n, d) directions: one group of 5 or 15, two groups of 15 for n = 30.
    samples = _estimates("orthogonal", num_directions)
    moments.assert_mean_is(samples, GRAD)
    groups = num_directions // min(num_directions, D)
    expected = ((D + 2) / num_directions - 1 / groups) * (GRAD @ GRAD)
    _assert_trace_is(samples, expected)
    iid = (D + 1) / num_directions * (GRAD @ GRAD)
    assert expected < iid


def test_orthogonal_directions_are_orthogonal_with_chi_norms():
    kind = estimators.Orthogonal()
    keys = jax.random.split(jax.random.key(2), 5)
    perturbations, weights = kind.draw_group(keys, X)
    rows = jax.vmap(_flat)(perturbations)
    gram = np.asarray(rows @ rows.T, np.float64)
    gaussian = jax.vmap(lambda k: _flat(estimators.Gaussian().draw(k, X)[0]))(keys)
    norms = np.linalg.norm(np.asarray(gaussian, np.float64), axis=1)
    # The norms are those of the keys' own Gaussian draws; the rows, orthogonal.
    np.testing.assert_allclose(np.diag(gram), norms**2, rtol=1e-5)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0.0, atol=1e-4 * norms.max()**2)
    jax.tree.map(np.testing.assert_array_equal, perturbations, weights)


@pytest.mark.slow
def test_orthogonal_blocks_equal_the_stored_group(monkeypatch):
    # Two groups of 15 in blocks of one group each, against every direction at once.
    monkeypatch.setattr(_one_pass, "CPU_BLOCK_ELEMENTS", 16 * D)
    estimate = functools.partial(estimators.zeroth_order_grad, quadratic, X,
                                 jax.random.key(4), num_samples=60, sigma=0.1,
                                 directions="orthogonal")
    blocks, samples = estimate(), estimate(return_samples=True)
    jax.tree.map(lambda e, s: np.testing.assert_allclose(e, s.mean(0), rtol=1e-5, atol=1e-5),
                 blocks, samples)


def test_orthogonal_directions_refuse_chunks_and_the_in_place_update():
    with pytest.raises(ValueError, match="chunk_size must be None"):
        estimators.zeroth_order_grad(quadratic, X, jax.random.key(0), num_samples=8,
                                     chunk_size=2, directions="orthogonal")
    with pytest.raises(ValueError, match="drawn again one by one"):
        estimators.zeroth_order_update(quadratic, X, jax.random.key(0), learning_rate=0.1,
                                       num_samples=8, directions="orthogonal")


# ------------------------------------------------------------------------ low rank
@pytest.mark.parametrize("rank", [1, 3])
def test_low_rank_directions_are_unbiased_with_the_closed_form_trace(rank):
    samples = _estimates(estimators.LowRank(rank), 1)
    moments.assert_mean_is(samples, GRAD)
    _assert_trace_is(samples, _low_rank_second_moment(rank) - GRAD @ GRAD)


def test_low_rank_leaves_are_rank_r_and_others_gaussian():
    perturbation, _ = estimators.LowRank(2).draw(jax.random.key(3), X)
    assert np.linalg.matrix_rank(np.asarray(perturbation["w"])) == 2
    gaussian, _ = estimators.Gaussian().draw(jax.random.key(3), X)
    np.testing.assert_array_equal(perturbation["b"], gaussian["b"])


@pytest.mark.parametrize("directions", [estimators.LowRank(2), "gaussian"])
@pytest.mark.slow
def test_the_seed_trick_gives_the_stored_numbers(directions):
    # Each direction drawn again, leaf by leaf, from its key, against every one stored.
    estimate = functools.partial(estimators.zeroth_order_grad, quadratic, X,
                                 jax.random.key(5), num_samples=16, sigma=0.1,
                                 directions=directions)
    seeded, samples = estimate(chunk_size=2), estimate(return_samples=True)
    jax.tree.map(lambda e, s: np.testing.assert_allclose(e, s.mean(0), rtol=1e-5, atol=1e-5),
                 seeded, samples)


def test_low_rank_rank_is_checked():
    with pytest.raises(ValueError, match="rank must be an integer >= 1"):
        estimators.LowRank(0)


# ------------------------------------------------------------------------------ keys
@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
@pytest.mark.parametrize("options", [{"chunk_size": 4}, {"chunk_size": 2}, {}],
                         ids=["chunked", "seeded", "blocks"])
def test_rbg_keys_give_unbiased_estimates_by_every_strategy(impl, options):
    # An rbg direction drawn in a vmapped chunk and again in a scan was another
    # direction: the chunked estimate of a linear gradient was shrunk to about a fifth.
    def linear(params):
        return _flat(params) @ jnp.asarray(GRAD, jnp.float32)

    estimate = jax.jit(lambda keys: jax.lax.map(lambda k: _flat(estimators.zeroth_order_grad(
        linear, X, k, num_samples=8, **options)), keys))
    samples = np.asarray(estimate(jax.random.split(jax.random.key(1, impl=impl), 1024)),
                         np.float64)
    covariance = (np.outer(GRAD, GRAD) + GRAD @ GRAD * np.eye(D)) / 4  # 4 directions
    moments.assert_mean_is(samples, GRAD, covariance)


@pytest.mark.slow
def test_rbg_keys_give_the_numbers_of_the_threefry_key_of_the_same_seed():
    for function in (
        lambda k: estimators.zeroth_order_grad(quadratic, X, k, num_samples=8, chunk_size=2),
        lambda k: estimators.zeroth_order_update(quadratic, X, k, learning_rate=0.1,
                                                 num_samples=8)[0],
        lambda k: estimators.forward_gradient(quadratic, X, k, num_samples=4),
        lambda k: estimators.gaussian_policy(0.1)[0](X, k),
    ):
        jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-6),
                     function(jax.random.key(9, impl="rbg")), function(jax.random.key(9)))


# ---------------------------------------------------------------- a user-defined kind
@dataclasses.dataclass(frozen=True)
class Uniform(estimators.DirectionKind):
    """`u_j ~ U(-sqrt 3, sqrt 3)`: unit variance, fourth moment 9/5, so one central
    direction has the variance trace `(d + 9/5 - 2) ||g||^2 = (d - 0.2) ||g||^2`."""

    def sample_leaf(self, key, shape, dtype, stored):
        return jax.random.uniform(key, shape, dtype, -math.sqrt(3), math.sqrt(3))

    def variance_factor(self, num_params):
        return num_params - 0.2

    def coordinate_size(self, num_params):
        return 0.5


def test_a_user_defined_kind_is_unbiased_with_its_own_trace():
    samples = _estimates(Uniform(), 1)
    moments.assert_mean_is(samples, GRAD)
    _assert_trace_is(samples, Uniform().variance_factor(D) * (GRAD @ GRAD))


@pytest.mark.slow
def test_a_user_defined_kind_runs_through_the_update_and_sharding():
    kind = Uniform()
    grad = estimators.zeroth_order_grad(quadratic, X, jax.random.key(6), num_samples=8,
                                        sigma=0.1, directions=kind, chunk_size=2)
    updated, _ = estimators.zeroth_order_update(quadratic, X, jax.random.key(6),
                                                learning_rate=0.1, num_samples=8,
                                                sigma=0.1, directions=kind)
    jax.tree.map(lambda u, x, g: np.testing.assert_allclose(u, x - 0.1 * g, rtol=1e-4,
                                                            atol=1e-4), updated, X, grad)
    mesh = Mesh(np.array(jax.devices()[:4]), ("samples",))
    sharded = estimators.zeroth_order_grad(
        quadratic, X, jax.random.key(6), num_samples=8, sigma=0.1, directions=kind,
        sample_sharding=NamedSharding(mesh, PartitionSpec("samples")))
    jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5),
                 sharded, grad)


def test_the_precision_floor_comes_from_the_kind_not_its_name():
    # The floor solves W T / (n sigma^2) = c_I ||g||^2 / n: with the kind's W = d and
    # c_I = d - 0.2, sigma = sqrt(d T / (d - 0.2)) / ||g||, T = tau_out^2 / 2.
    floor = estimators.rounding_floor_sigma(3.0, 2.0, jnp.float32, num_params=D,
                                            directions=Uniform())
    spacing = 2.0**-23 * 2.0  # float32 at 3.0
    expected = math.sqrt(D * spacing**2 / 12 / 2 / (D - 0.2)) / 2.0
    np.testing.assert_allclose(float(floor), expected, rtol=1e-6)
    # The smallest resolved sigma: four spacings of the largest parameter over the
    # kind's coordinate size (0.5 here, 1 for Gaussian directions).
    x = jnp.full(3, 1024.0)
    for kind, size in ((Uniform(), 0.5), (estimators.Gaussian(), 1.0)):
        np.testing.assert_allclose(float(_sampling.resolved_sigma(1e-12, x, kind)),
                                   4 * 2.0**-23 * 1024 / size, rtol=1e-6)


# ------------------------------------------------------------------ forward gradient
@pytest.mark.parametrize("directions", ["gaussian", "sphere", estimators.LowRank(2)])
@pytest.mark.slow
def test_forward_gradient_is_the_jacobian_times_each_direction(directions):
    with enable_x64():
        params = jax.tree.map(lambda x: x.astype(jnp.float64), X)
        key = jax.random.key(8)
        samples = estimators.forward_gradient(quadratic, params, key, num_samples=4,
                                              directions=directions, return_samples=True)
        kind = estimators.DIRECTION_KINDS.get(directions, directions) if isinstance(
            directions, str) else directions
        jacobian = jax.jacrev(quadratic)(params)
        for i, sample_key in enumerate(jax.random.split(key, 4)):
            p, w = kind.draw(sample_key, params)
            derivative = sum(jnp.vdot(jacobian[n], p[n]) for n in SHAPES)
            for name in SHAPES:
                np.testing.assert_allclose(samples[name][i], derivative * w[name], rtol=1e-10)


@pytest.mark.slow
def test_forward_gradient_strategies_agree_and_match_the_gaussian_covariance():
    estimate = functools.partial(estimators.forward_gradient, quadratic, X,
                                 jax.random.key(12), num_samples=8)
    reference = estimate(return_samples=True)
    for variant in (estimate(), estimate(chunk_size=1), estimate(chunk_size=4)):
        jax.tree.map(lambda e, s: np.testing.assert_allclose(e, s.mean(0), rtol=1e-5,
                                                             atol=1e-5), variant, reference)
    samples = np.asarray(jax.jit(jax.vmap(lambda k: _flat(estimators.forward_gradient(
        quadratic, X, k, num_samples=1))))(jax.random.split(jax.random.key(13),
                                                            NUM_ESTIMATES)), np.float64)
    moments.assert_mean_is(samples, GRAD, np.outer(GRAD, GRAD) + GRAD @ GRAD * np.eye(D))
    _assert_trace_is(samples, (D + 1) * (GRAD @ GRAD))


@pytest.mark.parametrize(
    ("params", "message"),
    [({}, "non-empty"), ({"a": jnp.arange(3)}, "int32"), ({"a": 1.0}, "jnp.asarray"),
     ({"a": jnp.ones(2, jnp.complex64)}, "complex64"), ({"a": jnp.ones(2, bool)}, "bool")],
)
def test_every_estimator_refuses_params_that_are_not_real_float_arrays(params, message):
    for estimate in (
        lambda: estimators.zeroth_order_grad(quadratic, params, jax.random.key(0),
                                             num_samples=2),
        lambda: estimators.zeroth_order_update(quadratic, params, jax.random.key(0),
                                               learning_rate=0.1, num_samples=2),
        lambda: estimators.forward_gradient(quadratic, params, jax.random.key(0),
                                            num_samples=2),
        lambda: estimators.policy_gradient(*estimators.gaussian_policy(0.1), quadratic,
                                           params, jax.random.key(0), num_samples=2),
    ):
        with pytest.raises(ValueError, match=rf"params must be .*{message}"):
            estimate()


def test_an_unknown_kind_is_refused_with_the_shortcuts():
    with pytest.raises(ValueError, match=r"directions must be one of .*orthogonal"):
        estimators.forward_gradient(quadratic, X, jax.random.key(0), num_samples=2,
                                    directions="halton")
    assert optax.tree.size(X) == D
