"""Guided ES directions (`estimators.Guided`): the covariance `alpha/d I + (1-alpha)/k P`
in closed form, `P` the projection on the surrogate gradients, and the estimate's
expectation `Sigma g` on a linear function."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxtricks import estimators

PARAMS = {"a": jnp.zeros(2), "b": jnp.zeros((1, 3))}  # d = 5 in two leaves
SUBSPACE = {"a": jnp.array([[1.0, -2.0], [0.5, 0.0]]),
            "b": jnp.array([[[0.0, 1.0, 3.0]], [[1.0, 1.0, -1.0]]])}  # k = 2


def _flat(tree, leading=()):
    return np.concatenate([np.asarray(leaf, np.float64).reshape(*leading, -1)
                           for leaf in jax.tree.leaves(tree)], axis=-1)


def _covariance(alpha):
    """`alpha/d I + (1-alpha)/k U (U^T U)^-1 U^T`, from the raw vectors (no QR), float64."""
    u = _flat(SUBSPACE, (2,)).T  # [d, k]
    d, k = u.shape
    projection = u @ np.linalg.solve(u.T @ u, u.T)
    return alpha / d * np.eye(d) + (1 - alpha) / k * projection


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_the_draws_have_the_guided_covariance(alpha):
    kind = estimators.Guided(subspace=SUBSPACE, alpha=alpha)
    n = 200_000
    keys = jax.random.split(jax.random.key(0), n)
    perturbations, weights = jax.jit(lambda k: kind.draw_group(k, PARAMS))(keys)
    p = _flat(perturbations, (n,))
    np.testing.assert_array_equal(p, _flat(weights, (n,)))
    expected = _covariance(alpha)
    empirical = p.T @ p / n  # the mean is 0
    # Each entry is a mean of n products: variance (S_ii S_jj + S_ij^2) / n (Isserlis).
    se = np.sqrt((np.outer(np.diag(expected), np.diag(expected)) + expected**2) / n)
    d = len(expected)
    critical = stats.norm.ppf(1 - 0.001 / (2 * d * (d + 1) // 2))  # Bonferroni, 0.1 %
    np.testing.assert_array_less(np.abs(empirical - expected), critical * se + 1e-12)
    assert np.trace(expected) == pytest.approx(1.0)


def test_the_estimate_of_a_linear_function_has_expectation_sigma_g():
    g = {"a": jnp.array([1.0, 2.0]), "b": jnp.array([[-1.0, 0.5, 3.0]])}

    @jax.jit
    def samples(subspace):  # a traced subspace, as when it follows the training
        kind = estimators.Guided(subspace=subspace, alpha=0.3)
        return estimators.zeroth_order_grad(
            lambda x: _dot(g, x), PARAMS, jax.random.key(1), num_samples=2 * 50_000,
            sigma=0.1, directions=kind, return_samples=True)

    per_sample = _flat(samples(SUBSPACE), (50_000,))
    expected = _covariance(0.3) @ _flat(g)
    se = per_sample.std(0, ddof=1) / np.sqrt(len(per_sample))
    critical = stats.norm.ppf(1 - 0.001 / (2 * 5))
    np.testing.assert_array_less(np.abs(per_sample.mean(0) - expected), critical * se)


def _dot(a, b):
    return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b),
                                              strict=True))


def test_bad_arguments_are_refused_naming_them():
    with pytest.raises(ValueError, match="alpha must be a float in"):
        estimators.Guided(subspace=SUBSPACE, alpha=1.5)
    with pytest.raises(ValueError, match="subspace must have one leading axis"):
        estimators.Guided(subspace={"a": jnp.zeros((2, 2)), "b": jnp.zeros((3, 1, 3))})
    wrong = estimators.Guided(subspace={"a": jnp.zeros((1, 3)), "b": jnp.zeros((1, 1, 3))})
    with pytest.raises(ValueError, match="subspace must be shaped like the params"):
        wrong.draw(jax.random.key(0), PARAMS)
    kind = estimators.Guided(subspace=SUBSPACE)
    with pytest.raises(ValueError, match="chunk_size must be None"):
        estimators.zeroth_order_grad(lambda x: _dot(x, x), PARAMS, jax.random.key(0),
                                     num_samples=4, directions=kind, chunk_size=2)
