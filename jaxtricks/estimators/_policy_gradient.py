"""Score-function (policy-gradient, REINFORCE) estimator and two policies (spec 5.1, 5.3, 5.6)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks
from jaxtricks.estimators import _baselines, _sampling


def policy_gradient(
    sample_fn: Callable,
    log_prob_fn: Callable,
    reward_fn: Callable,
    params,
    key: jax.Array,
    *,
    num_samples: int,
    baseline: str | jax.typing.ArrayLike | None = "leave_one_out",
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
):
    r"""Score-function estimate of `grad_params E_{y ~ p_params}[reward(y)]`.

    With `y_i = sample_fn(params, key_i)`, `r_i = reward_fn(y_i)` and the scores
    `s_i = grad_params log_prob_fn(params, y_i)`:

        g = (1/n) sum_i (r_i - b_i) s_i,        n = num_samples,

    unbiased whenever `b_i` does not depend on `y_i`, since `E[s] = 0`. The reward
    need not be differentiable (accuracy, F1, BLEU, a hard argmax). Without
    per-sample outputs the sum is one reverse-mode pass through
    `sum_i (r_i - b_i) log p(y_i)` (no per-sample score is stored).

    Args:
        sample_fn: `sample_fn(params, key) -> y`, a sample of the policy (any pytree).
        log_prob_fn: `log_prob_fn(params, y) -> scalar`, its log-probability.
        reward_fn: `reward_fn(y) -> scalar`.
        params: the policy's parameters, any pytree of float arrays.
        key: a `jax.random` key; sample `i` uses `jax.random.split(key, n)[i]`.
        num_samples: the number of samples `n`.
        baseline: None (`b = 0`); "mean" (`b = mean_j r_j`: expectation
            `(1 - 1/n) grad J`, biased, spec 5.6); "leave_one_out" (RLOO,
            `b_i = mean_{j!=i} r_j`, unbiased, equal to `n/(n-1)` times the mean-baseline
            estimate); "optimal" (`b* = E[r ||s||^2] / E[||s||^2]`, spec 5.1, estimated
            leave-one-out, unbiased); or a scalar constant.
        return_samples: return the per-sample estimates `(r_i - b_i) s_i`, each leaf with
            a leading `[num_samples]` axis; their mean over that axis is the estimate.
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys: the
            samples are then drawn and scored on the mesh's devices.

    Returns:
        The gradient estimate, shaped like `params` (or the per-sample estimates).

    Raises:
        ValueError: for `num_samples < 1` (`< 2` for the leave-one-out baselines), an
            unknown baseline, or a non-scalar reward or log-probability.

    References:
        Williams, REINFORCE (1992). Su, https://kexue.fm/archives/7737 (2020). Kool, van
        Hoof & Welling, "Buy 4 REINFORCE samples, get a baseline for free!" (2019).
        Mohamed et al., https://arxiv.org/abs/1906.10652.
    """
    checks.check_positive_int("num_samples", num_samples)
    _baselines.check_baseline(baseline, num_samples)
    sample_shape = jax.eval_shape(sample_fn, params, key)
    _sampling.check_scalar_output("reward_fn", jax.eval_shape(reward_fn, sample_shape))
    _sampling.check_scalar_output(
        "log_prob_fn", jax.eval_shape(log_prob_fn, params, sample_shape)
    )

    keys = _sampling.sample_keys(key, num_samples, sample_sharding)
    samples = jax.vmap(sample_fn, in_axes=(None, 0))(params, keys)
    rewards = jax.vmap(reward_fn)(samples)
    if return_samples or baseline == "optimal":
        scores = jax.vmap(jax.grad(log_prob_fn), in_axes=(None, 0))(params, samples)
        sq_norms = jax.vmap(lambda s: optax.tree.norm(s, squared=True))(scores)
        coefficients = _baselines.centred_rewards(rewards, baseline, sq_norms)
        if return_samples:
            return _sampling.scale_samples(coefficients, scores)
        return optax.tree.scale(1.0 / num_samples, _sampling.weighted_sum(coefficients, scores))
    coefficients = jax.lax.stop_gradient(_baselines.centred_rewards(rewards, baseline))

    def surrogate(p):
        log_probs = jax.vmap(log_prob_fn, in_axes=(None, 0))(p, samples)
        return jnp.sum(coefficients * log_probs) / num_samples

    return jax.grad(surrogate)(params)


def gaussian_policy(sigma: jax.typing.ArrayLike) -> tuple[Callable, Callable]:
    r"""The Gaussian policy `N(params, sigma^2 I)` over the parameters themselves.

    `sample_fn(params, key) = params + sigma u`, `u ~ N(0, I)` drawn exactly as
    `zeroth_order_grad(directions="gaussian")` draws its directions, and
    `log_prob_fn(params, w) = -||w - params||^2 / (2 sigma^2) - d log(sigma sqrt(2 pi))`,
    whose score is `(w - params) / sigma^2 = u / sigma`. Hence (spec 5.3, the post's
    "貌离神合") `policy_gradient(*gaussian_policy(sigma), fn, x, key, ...)` equals, for the
    same key, `zeroth_order_grad(fn, x, key, sigma=sigma, antithetic=False)` with the
    matching baseline (PG `None` / `fn(x)` / "optimal" for ZO `False` / `True` /
    "optimal"), up to floating-point rounding.

    Args:
        sigma: the policy's standard deviation, `> 0`.

    Returns:
        `(sample_fn, log_prob_fn)` for `policy_gradient`.
    """
    checks.check_scalar("sigma", sigma, low=0.0, low_inclusive=False)

    def sample_fn(params, key):
        perturbation, _ = _sampling.direction(key, params, "gaussian")
        return optax.tree.add_scale(params, sigma, perturbation)

    def log_prob_fn(params, sample):
        standardised = optax.tree.scale(1.0 / sigma, optax.tree.sub(sample, params))
        dimension = optax.tree.size(params)
        normaliser = dimension * (jnp.log(sigma) + 0.5 * math.log(2 * math.pi))
        return -0.5 * optax.tree.norm(standardised, squared=True) - normaliser

    return sample_fn, log_prob_fn


def categorical_policy(logits_fn: Callable) -> tuple[Callable, Callable]:
    r"""Independent categorical draws from the logits of a model.

    `logits_fn(params) -> [..., K]` (e.g. a classifier's logits on a batch, the data
    closed over). `sample_fn(params, key) -> int [...]` draws one class per position
    (`jax.random.categorical`), `log_prob_fn(params, y) = sum_positions
    log_softmax(logits)[y]`, the joint log-probability, whose score in the logits is
    `e_y - softmax(logits)` per position (spec 5.6).

    Args:
        logits_fn: `logits_fn(params) -> [..., K]` unnormalised log-probabilities.

    Returns:
        `(sample_fn, log_prob_fn)` for `policy_gradient`.
    """

    def sample_fn(params, key):
        return jax.random.categorical(key, logits_fn(params), axis=-1)

    def log_prob_fn(params, actions):
        log_probs = jax.nn.log_softmax(logits_fn(params), axis=-1)
        return jnp.sum(jnp.take_along_axis(log_probs, actions[..., None], axis=-1))

    return sample_fn, log_prob_fn
