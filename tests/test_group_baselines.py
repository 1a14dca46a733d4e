"""Group baselines (GRPO, Dr. GRPO, REINFORCE++) against direct numpy formulas, and their
exact expectation on a small categorical problem by enumeration of every outcome."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _compat import enable_x64

from jaxtricks import estimators
from jaxtricks.estimators import _baselines

GroupBaseline = estimators.GroupBaseline
REWARDS = np.random.default_rng(0).normal(size=12)


def _reference(rewards, group_size, center, scale, ddof, eps):
    """The advantages written out with numpy, group by group."""
    groups = rewards.reshape(-1, group_size)
    centre = groups.mean(1, keepdims=True) if center == "group" else rewards.mean()
    centred = groups - centre
    if scale == "group":
        centred = centred / (groups.std(1, ddof=ddof, keepdims=True) + eps)
    elif scale == "batch":
        centred = centred / (centred.std(ddof=ddof) + eps)
    return centred.reshape(-1)


@pytest.mark.parametrize(
    ("center", "scale", "ddof"),
    [("group", "group", 1), ("group", "group", 0), ("group", None, 0),
     ("batch", "batch", 0), ("group", "batch", 1)],
)
@pytest.mark.parametrize("group_size", [3, 4, None])
def test_advantages_are_the_papers_formulas(center, scale, ddof, group_size):
    baseline = GroupBaseline(group_size, center=center, scale=scale, ddof=ddof, eps=1e-6)
    got = _baselines.centred_rewards(jnp.asarray(REWARDS, jnp.float32), baseline)
    expected = _reference(REWARDS, group_size or 12, center, scale, ddof, 1e-6)
    np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-6)


def _exact_expectation(logits, rewards, group_size, baseline):
    """`E[(1/G) sum_i A_i (e_{y_i} - p)]` over all `K^G` outcomes, float64."""
    p = np.exp(logits) / np.exp(logits).sum()
    total = np.zeros_like(p)
    for outcome in itertools.product(range(len(p)), repeat=group_size):
        advantages = np.asarray(_baselines.centred_rewards(
            jnp.asarray(rewards[list(outcome)]), baseline))
        scores = np.eye(len(p))[list(outcome)] - p
        total += np.prod(p[list(outcome)]) * advantages @ scores / group_size
    return total, p * (rewards - p @ rewards)


LOGITS, GRADED = np.array([0.2, -0.3, 0.1]), np.array([0.9, 0.4, 0.1])


@pytest.mark.parametrize("group_size", [2, 4])
def test_exact_expectations_rloo_unbiased_dr_grpo_shrunk_grpo_biased(group_size):
    with enable_x64():
        rloo, gradient = _exact_expectation(LOGITS, GRADED, group_size, "leave_one_out")
        np.testing.assert_allclose(rloo, gradient, rtol=1e-12, atol=1e-15)
        dr_grpo, _ = _exact_expectation(LOGITS, GRADED, group_size,
                                        GroupBaseline(group_size, scale=None))
        np.testing.assert_allclose(dr_grpo, (1 - 1 / group_size) * gradient, rtol=1e-12,
                                   atol=1e-15)
        grpo, _ = _exact_expectation(LOGITS, GRADED, group_size, GroupBaseline(group_size))
        # GRPO's std depends on the sample's own reward: not a multiple of the gradient.
        cosine = grpo @ gradient / np.linalg.norm(grpo) / np.linalg.norm(gradient)
        assert cosine < 1 - 1e-6
        assert np.linalg.norm(grpo - gradient) > 0.1 * np.linalg.norm(gradient)


def test_group_baselines_run_through_both_estimators_and_are_checked():
    logits = jnp.zeros(3)
    reward = lambda y: (y == 2).astype(jnp.float32)  # noqa: E731
    estimate = estimators.policy_gradient(
        *estimators.categorical_policy(lambda p: p), reward, logits, jax.random.key(0),
        num_samples=8, baseline=GroupBaseline(4))
    assert estimate.shape == (3,) and np.all(np.isfinite(estimate))
    zo = estimators.zeroth_order_grad(
        lambda x: jnp.sum(x**2), jnp.ones(3), jax.random.key(0), num_samples=8,
        antithetic=False, baseline=GroupBaseline(4, scale=None))
    assert np.all(np.isfinite(zo))
    for baseline, message in ((GroupBaseline(3), "group_size must divide"),
                              (GroupBaseline(4, ddof=4), "ddof"),
                              (GroupBaseline(1), "group_size"),
                              (GroupBaseline(4, center="prompt"), "center")):
        with pytest.raises(ValueError, match=message):
            estimators.policy_gradient(
                *estimators.categorical_policy(lambda p: p), reward, logits,
                jax.random.key(0), num_samples=8, baseline=baseline)


def test_fzoo_normalises_the_values_by_their_standard_deviation():
    # FZOO (arXiv:2506.09034): c_i = (f(x + sigma u_i) - f(x)) / (sigma std_j f_j).
    x, key = jnp.array([0.3, -0.2, 0.5]), jax.random.key(4)

    def loss(p):
        return jnp.sum(p**2) + jnp.sum(jnp.sin(3 * p))

    baseline = GroupBaseline(center="unperturbed", scale="batch", ddof=0, eps=0.0)
    samples = estimators.zeroth_order_grad(
        loss, x, key, num_samples=8, sigma=0.1, antithetic=False, baseline=baseline,
        directions="rademacher", return_samples=True)
    raw = estimators.zeroth_order_grad(
        loss, x, key, num_samples=8, sigma=0.1, antithetic=False, baseline=None,
        directions="rademacher", return_samples=True)
    signs = np.sign(np.asarray(raw))  # the rademacher directions (values are nonzero)
    values = 0.1 * np.asarray(raw)[:, 0] / signs[:, 0]  # f(x + sigma u_i)
    expected = (values - float(loss(x))) / values.std() / 0.1
    np.testing.assert_allclose(samples, expected[:, None] * signs, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="a policy has no unperturbed sample"):
        estimators.policy_gradient(*estimators.gaussian_policy(0.1), loss, x, key,
                                   num_samples=8, baseline=baseline)
