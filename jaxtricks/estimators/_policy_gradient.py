"""Score-function (policy-gradient, REINFORCE) estimator and two policies."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeAlias

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, dtypes, keys
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _plan, _sampling

SampleFn: TypeAlias = Callable[[PyTree, KeyLike], PyTree]
"""`sample_fn(params, key) -> sample`, a draw of the policy."""
LogProbFn: TypeAlias = Callable[[PyTree, PyTree], jax.Array]
"""`log_prob_fn(params, sample) -> scalar`, the log-probability of a sample."""


def policy_gradient(
    sample_fn: SampleFn,
    log_prob_fn: LogProbFn,
    reward_fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: KeyLike,
    *,
    num_samples: int,
    baseline: _baselines.Baseline = "leave_one_out",
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
) -> PyTree:
    r"""Score-function estimate of `grad_params E_{y ~ p_params}[reward(y)]`.

    .. math::

        \hat g = \frac{1}{n} \sum_{i=1}^n (r_i - b_i)\, \nabla_\theta \log p_\theta(y_i),
        \qquad y_i \sim p_\theta, \quad r_i = \mathrm{reward}(y_i),

    unbiased whenever `b_i` does not depend on `y_i`, since `E[s] = 0` for the score `s`.
    The reward need not be differentiable (accuracy, F1, BLEU, a hard argmax); the estimate
    itself is differentiable where the policy and the reward are. Baselines: :ref:`estimators-math`.

    Args:
        sample_fn: `sample_fn(params, key) -> y`, a sample of the policy (any pytree).
        log_prob_fn: `log_prob_fn(params, y) -> scalar`, its log-probability.
        reward_fn: `reward_fn(y) -> scalar`.
        params: the policy's parameters, any pytree of float arrays.
        key: a `jax.random.key` or a legacy `PRNGKey` (the same numbers); sample `i` gets
            the typed key `jax.random.split(key, n)[i]`.
        num_samples: the number of samples `n`.
        baseline: "leave_one_out" (RLOO, unbiased), None, "mean" (biased), "optimal"
            (leave-one-out, unbiased), a scalar or a `GroupBaseline` (GRPO and kin, biased).
        return_samples: return the per-sample estimates `(r_i - b_i) s_i` (leading axis `n`).
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys: the
            samples are then drawn and scored on the mesh's devices.

    Returns:
        The gradient estimate, shaped like `params` (or the per-sample estimates).

    Raises:
        ValueError: for `num_samples < 1` (`< 2` for the leave-one-out baselines), a
            boolean or unknown baseline (the message lists the accepted ones), a
            non-scalar reward or log-probability, or a `key` that is not a key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> logits = jnp.zeros(3)  # the policy's parameters: a uniform categorical
        >>> reward = lambda y: (y == 2).astype(jnp.float32)  # reward for class 2 only
        >>> g = estimators.policy_gradient(
        ...     *estimators.categorical_policy(lambda p: p), reward, logits,
        ...     jax.random.key(0), num_samples=4096)
        >>> exact = jax.grad(lambda p: jax.nn.softmax(p)[2])(logits)
        >>> g.shape, bool(jnp.allclose(g, exact, atol=0.05))
        ((3,), True)

    References:
        Williams, REINFORCE (1992). Su, https://kexue.fm/archives/7737 (2020), for the
        "optimal" baseline. Kool, van Hoof & Welling, "Buy 4 REINFORCE samples, get a
        baseline for free!" (2019). Mohamed et al., https://arxiv.org/abs/1906.10652.
    """
    key = keys.as_key(key, "key")
    _sampling.check_params(params)
    checks.check_positive_int("num_samples", num_samples)
    _baselines.check_baseline(baseline, num_samples, _baselines.POLICY_BASELINES)
    sample_shape = jax.eval_shape(sample_fn, params, key)
    _sampling.check_scalar_output("reward_fn", jax.eval_shape(reward_fn, sample_shape))
    _sampling.check_scalar_output(
        "log_prob_fn", jax.eval_shape(log_prob_fn, params, sample_shape), floating=True
    )
    _sampling.check_sample_sharding(sample_sharding, num_samples)

    sample_keys = _sampling.sample_keys(key, num_samples, sample_sharding)
    samples = jax.vmap(sample_fn, in_axes=(None, 0))(params, sample_keys)
    rewards = jax.vmap(lambda y: _sampling.value_at(reward_fn, y, "reward_fn"))(samples)
    if return_samples or _baselines.needs_sq_norms(baseline):
        scores = jax.vmap(jax.grad(log_prob_fn), in_axes=(None, 0))(params, samples)
        sq_norms = jax.vmap(lambda s: optax.tree.norm(s, squared=True))(scores)
        coefficients = _baselines.centred_rewards(rewards, baseline, sq_norms)
        if return_samples:
            return _sampling.scale_samples(coefficients, scores)
        return optax.tree.scale(1.0 / num_samples, _sampling.weighted_sum(coefficients, scores))
    coefficients = _baselines.centred_rewards(rewards, baseline)

    # The coefficients are constants of `surrogate` (a closure, not a function of `p`):
    # no stop_gradient, so that the estimate's own derivative in `params` is right.
    def surrogate(p: PyTree) -> jax.Array:
        log_probs = jax.vmap(log_prob_fn, in_axes=(None, 0))(p, samples)
        return jnp.sum(jnp.multiply(*dtypes.promoted(coefficients, log_probs))) / num_samples

    return jax.grad(surrogate)(params)


def gaussian_policy(sigma: jax.typing.ArrayLike) -> tuple[SampleFn, LogProbFn]:
    r"""The Gaussian policy `N(params, sigma^2 I)` over the parameters themselves.

    .. math::

        w = x + \sigma u, \quad u \sim \mathcal{N}(0, I_d), \qquad
        \log p_x(w) = -\frac{\lVert w - x \rVert^2}{2 \sigma^2} - d \log(\sigma \sqrt{2 \pi}),
        \qquad \nabla_x \log p_x(w) = \frac{u}{\sigma},

    `u` drawn exactly as `zeroth_order_grad(directions="gaussian")` draws it. So, an exact
    identity, `policy_gradient(*gaussian_policy(sigma), fn, x, key, ...)` equals, sample by
    sample, `zeroth_order_grad(fn, x, key, sigma=sigma, antithetic=False)` with the same
    baseline (ZO's "unperturbed" is PG's scalar `fn(x)`), up to rounding
    (:ref:`estimators-math`). The sample is rounded once to the params' dtype, `sigma`
    raised to `zeroth_order_grad`'s `sigma_min` (:ref:`estimators-precision`).

    Args:
        sigma: the policy's standard deviation, `> 0` (checked when concrete).

    Returns:
        `(sample_fn, log_prob_fn)` for `policy_gradient`; `sample_fn` takes a typed key
        or a legacy `PRNGKey`.

    Raises:
        ValueError: for a concrete `sigma <= 0`; `sample_fn`, for a `key` that is
            neither a typed key nor a `PRNGKey`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> def loss(p):
        ...     return jnp.sum(p ** 2)
        >>> x, key = jnp.array([1.0, -2.0]), jax.random.key(0)
        >>> pg = estimators.policy_gradient(
        ...     *estimators.gaussian_policy(0.1), loss, x, key, num_samples=8)
        >>> zo = estimators.zeroth_order_grad(
        ...     loss, x, key, num_samples=8, sigma=0.1, antithetic=False,
        ...     baseline="leave_one_out")
        >>> bool(jnp.allclose(pg, zo, rtol=1e-4, atol=1e-4))
        True

    References:
        Su, "殊途同归的策略梯度与零阶优化", https://kexue.fm/archives/7737 (2020);
        Salimans et al., https://arxiv.org/abs/1703.03864, section 2 (ES as a Gaussian
        search distribution over the parameters).
    """
    _plan.check_sigma(sigma)

    def sample_fn(params: PyTree, key: KeyLike) -> PyTree:
        typed = keys.batch_invariant(keys.as_key(key, "key"), "key")
        perturbation, _ = _directions.Gaussian().draw(typed, params)
        return _sampling.perturb(
            params, _sampling.resolved_sigma(sigma, params, _directions.Gaussian()), perturbation
        )

    def log_prob_fn(params: PyTree, sample: PyTree) -> jax.Array:
        scale = _sampling.resolved_sigma(sigma, params, _directions.Gaussian())
        standardised = jax.tree.map(
            lambda w, p: (
                w.astype(dtypes.compute_dtype(w.dtype)) - p.astype(dtypes.compute_dtype(p.dtype))
            ) / scale,
            sample,
            params,
        )
        dimension = optax.tree.size(params)
        normaliser = dimension * (jnp.log(scale) + 0.5 * math.log(2 * math.pi))
        return -0.5 * optax.tree.norm(standardised, squared=True) - normaliser

    return sample_fn, log_prob_fn


def categorical_policy(
    logits_fn: Callable[[PyTree], jax.Array]
) -> tuple[SampleFn, LogProbFn]:
    r"""Independent categorical draws from the logits of a model.

    `logits_fn(params) -> [..., K]` (e.g. a classifier's logits on a batch, the data
    closed over). `sample_fn(params, key) -> int [...]` draws one class per position
    (`jax.random.categorical`), `log_prob_fn(params, y) = sum_positions
    log_softmax(logits)[y]`, the joint log-probability, whose score in the logits is
    `e_y - softmax(logits)` per position.

    Args:
        logits_fn: `logits_fn(params) -> [..., K]` unnormalised log-probabilities.

    Returns:
        `(sample_fn, log_prob_fn)` for `policy_gradient`; `sample_fn` takes a typed key
        or a legacy `PRNGKey` (the same draws).

    Raises:
        ValueError: `sample_fn`, for a `key` that is neither a typed key nor a
            `PRNGKey`.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> sample_fn, log_prob_fn = estimators.categorical_policy(lambda p: p)
        >>> logits = jnp.log(jnp.array([[0.5, 0.5], [0.9, 0.1]]))  # two positions
        >>> sample_fn(logits, jax.random.key(0)).shape
        (2,)
        >>> round(float(log_prob_fn(logits, jnp.array([1, 0]))), 4)  # log(0.5 * 0.9)
        -0.7985

    References:
        Williams, "Simple statistical gradient-following algorithms for connectionist
        reinforcement learning", Machine Learning 8 (1992).
    """

    def sample_fn(params: PyTree, key: KeyLike) -> jax.Array:
        return jax.random.categorical(keys.as_key(key, "key"), logits_fn(params), axis=-1)

    def log_prob_fn(params: PyTree, actions: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(logits_fn(params), axis=-1)
        # An action outside [0, K) has no probability: NaN, not a wrapped index's.
        inside = (actions >= 0) & (actions < log_probs.shape[-1])
        picked = jnp.take_along_axis(log_probs, jnp.where(inside, actions, 0)[..., None], axis=-1)
        return jnp.sum(jnp.where(inside[..., None], picked, jnp.nan))

    return sample_fn, log_prob_fn
