"""The ZO/PG equivalence benchmark's helpers, against brute force and known answers."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import zo_policy


def _tiny_problem():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(2, 3)), "b": rng.normal(size=3)}
    x = rng.normal(size=(2, 2))        # B=2 rows, 2 features
    rewards = rng.normal(size=(2, 3))  # real-valued rewards, C=3 classes
    return params, x, rewards


def _brute_force_expected_reward(params, x, rewards, temperature):
    """`E_a R(a)` over every joint action `a` of the B rows, `R(a) = mean_i r_{i, a_i}`,
    `P(a) = prod_i softmax(x_i W + b / tau)_{a_i}`, in numpy float64."""
    logits = (x @ params["w"] + params["b"]) / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    rows = range(len(x))
    total = 0.0
    for actions in itertools.product(range(rewards.shape[1]), repeat=len(x)):
        joint = np.prod([probs[i, a] for i, a in zip(rows, actions, strict=True)])
        total += joint * np.mean([rewards[i, a] for i, a in zip(rows, actions, strict=True)])
    return total


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_policy_gradient_helper_matches_brute_force_over_joint_actions(temperature):
    params, x, rewards = _tiny_problem()
    with jax.enable_x64(True):
        grad = zo_policy.expected_reward_policy_gradient(
            lambda p: x @ p["w"] + p["b"], jax.tree.map(jnp.asarray, params),
            jnp.asarray(rewards), temperature)
        value = zo_policy.expected_reward(jnp.asarray(x @ params["w"] + params["b"]),
                                          jnp.asarray(rewards), temperature)
    np.testing.assert_allclose(
        value, _brute_force_expected_reward(params, x, rewards, temperature), rtol=1e-12)
    step = 1e-6
    for name, leaf in params.items():
        for index in np.ndindex(leaf.shape):
            shifted = [{**params, name: leaf.copy()} for _ in range(2)]
            shifted[0][name][index] += step
            shifted[1][name][index] -= step
            plus, minus = (_brute_force_expected_reward(p, x, rewards, temperature)
                           for p in shifted)
            np.testing.assert_allclose(grad[name][index], (plus - minus) / (2 * step),
                                       rtol=1e-6, atol=1e-10)


def test_argmax_reward_is_the_reward_of_the_largest_logit():
    rng = np.random.default_rng(1)
    logits, rewards = rng.normal(size=(7, 4)), rng.normal(size=(7, 4))
    expected = rewards[np.arange(7), logits.argmax(-1)].mean()
    np.testing.assert_allclose(zo_policy.argmax_reward(jnp.asarray(logits, jnp.float32),
                                                       jnp.asarray(rewards, jnp.float32)),
                               expected, rtol=1e-6)
    labels = np.array([0, 3, 1, 1, 2, 0, 3], np.uint8)
    accuracy = zo_policy.argmax_reward(jnp.asarray(logits), jax.nn.one_hot(labels, 4))
    np.testing.assert_allclose(accuracy, np.mean(logits.argmax(-1) == labels))


def test_cosines_and_ratios_of_a_zero_estimate_are_zero_not_nan():
    target = np.array([3.0, 4.0])
    cosines, ratios = zo_policy.cosines_and_ratios(np.array([[0.0, 0.0], [6.0, 8.0],
                                                             [-4.0, 3.0]]), target)
    np.testing.assert_allclose(cosines, [0.0, 1.0, 0.0])
    np.testing.assert_allclose(ratios, [0.0, 2.0, 1.0])


def test_noise_free_comparison_recovers_the_mean_behind_the_noise():
    # Mean mu at cosine 0.6 to g, |mu| = |g| / 2; noise of std 5.5 |mu| per coordinate
    # in d = 200: the plain cosine of the 6000-sample mean is ~0.42.
    rng = np.random.default_rng(2)
    d, keys, per_key = 200, 6, 1000
    target = rng.normal(size=d)
    orthogonal = rng.normal(size=d)
    orthogonal -= orthogonal @ target / (target @ target) * target
    mu = 0.6 * target / np.linalg.norm(target) + 0.8 * orthogonal / np.linalg.norm(orthogonal)
    mu *= 0.5 * np.linalg.norm(target)
    results, plain = [], []
    for _ in range(20):
        samples = mu + 5.5 * np.linalg.norm(mu) * rng.normal(size=(keys, per_key, d))
        results.append(np.ravel(zo_policy.noise_free_comparison(samples, target)))
        plain.append(zo_policy.cosines_and_ratios(samples.mean((0, 1))[None], target)[0][0])
    cosine, cosine_se, ratio, ratio_se = np.array(results).T
    assert np.mean(plain) < 0.5
    # The repeats agree with the truth within 4 standard errors of their mean, and the
    # jackknife's standard error matches their spread within a factor 2.
    for values, errors, truth in ((cosine, cosine_se, 0.6), (ratio, ratio_se, 0.5)):
        assert abs(values.mean() - truth) < 4 * values.std(ddof=1) / np.sqrt(len(values))
        assert 0.5 < np.median(errors) / values.std(ddof=1) < 2.0


def test_noise_free_comparison_is_nan_when_the_noise_swamps_the_mean():
    sample = np.random.default_rng(3).normal(size=50)
    samples = np.stack([sample, -sample])[:, None]   # [K=2, J=1, d]: |sum|^2 = 0
    (cosine, cosine_se), (ratio, ratio_se) = zo_policy.noise_free_comparison(
        samples, np.ones(50))
    assert np.isnan([cosine, cosine_se, ratio, ratio_se]).all()
