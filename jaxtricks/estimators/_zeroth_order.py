"""Zeroth-order (random-perturbation) gradient estimator."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _plan, _sampling, _strategy


def zeroth_order_grad(
    fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: KeyLike,
    *,
    num_samples: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str | _directions.DirectionKind = "gaussian",
    baseline: _baselines.Baseline = "unperturbed",
    chunk_size: int | None = None,
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
) -> PyTree:
    r"""Estimates the gradient of the smoothed `fn` at `params` from values of `fn` alone.

    .. math::

        \hat g = \frac{1}{n} \sum_{i=1}^n c_i w_i, \qquad
        c_i = \frac{f(x + \sigma p_i) - f(x - \sigma p_i)}{2 \sigma}
        \ \text{(antithetic)} \quad \text{or} \quad
        \frac{f(x + \sigma p_i) - b_i}{\sigma} \ \text{(forward)},

    with the perturbations `p_i` and weights `w_i` of `directions` (`p = w = u ~ N(0, I)`
    for "gaussian", unbiased for the gradient of the Gaussian smoothing `E f(x + sigma
    u)`), `n = num_samples / 2` (antithetic) or `num_samples` directions, direction `i`
    drawn from `jax.random.split(key, n)[i]`. With Gaussian directions the forward estimate
    is, sample by sample, REINFORCE on `N(x, sigma^2 I)` (`gaussian_policy`).

    By default blocks of directions are drawn once and evaluated in a `lax.scan`; where
    two directions would outgrow a block (2^20 numbers on CPU), they are taken one at a
    time by MeZO's seed trick, so the default plans at most `jax.grad`'s peak (the
    estimators page tabulates the strategies). `sigma` is raised to the smallest step
    the params' dtype resolves.

    Args:
        fn: `fn(params) -> scalar`, the objective (need not be differentiable).
        params: the point `x`, a non-empty pytree of real floating arrays.
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples: the number of perturbed evaluations of `fn` (even if antithetic).
        sigma: a scalar `> 0`: 1e-3 (MeZO's) for smooth objectives, else their scale.
        antithetic: central differences over `±p` (the baseline is then unused).
        directions: a name of `DIRECTION_KINDS` ("gaussian", "sphere", "rademacher",
            "orthogonal", "low_rank") or a `DirectionKind`, a user's own included.
        baseline: `b_i` of forward differences: "unperturbed" (`f(x)`), a name or a
            `GroupBaseline` as in `policy_gradient`, or a scalar.
        chunk_size: evaluations per chunk (a divisor of `num_samples`, even when
            antithetic) to bound memory by hand, or None for the default above.
        return_samples: return the per-direction estimates `c_i w_i` (leading axis `n`).
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys, whose
            devices divide `n`: the directions are evaluated across the mesh.

    Returns:
        The gradient estimate, shaped like `params` (or the per-direction estimates).

    Raises:
        ValueError: naming the argument, for bad `params`, `num_samples`, `sigma` (not a
            positive scalar), `chunk_size`, `directions`, `baseline`, `sample_sharding`,
            a non-scalar `fn`, or a `key` that is not a key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> loss = lambda p: jnp.sum(p["w"] ** 2)
        >>> params = {"w": jnp.array([1.0, -2.0])}
        >>> g = estimators.zeroth_order_grad(loss, params, jax.random.key(0), num_samples=4096)
        >>> bool(jnp.allclose(g["w"], jnp.array([2.0, -4.0]), atol=0.5))
        True

    References:
        Nesterov & Spokoiny, "Random gradient-free minimization of convex functions"
        (2017). Spall, SPSA (1992). Salimans et al., https://arxiv.org/abs/1703.03864.
        Malladi et al. (MeZO), https://arxiv.org/abs/2305.17333. Su,
        https://kexue.fm/archives/7737 (2020), for the "optimal" baseline.
    """
    _plan.check_arguments(params, num_samples, sigma, antithetic, directions, baseline,
                          chunk_size)
    sample_keys = _sampling.sample_keys(key, num_samples // 2 if antithetic else num_samples)
    plan = _plan.create(fn, params, num_samples=num_samples, sigma=sigma,
                        difference="central" if antithetic else "forward",
                        directions=directions, baseline=baseline,
                        sample_sharding=sample_sharding)
    return _strategy.estimate(plan, sample_keys, chunk_size, return_samples)
