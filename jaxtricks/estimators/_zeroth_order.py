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
        \ \text{(antithetic) or } \frac{f(x + \sigma p_i) - b_i}{\sigma} \ \text{(forward)},

    with the perturbations `p_i` and weights `w_i` of `directions` (`p = w = u ~ N(0, I)` for
    "gaussian": unbiased for the gradient of `E f(x + sigma u)`), `i` drawn from
    `jax.random.split(key, n)[i]`. By default at most `jax.grad`'s memory (strategies:
    :ref:`estimators-strategies`); a too small `sigma` is raised (:ref:`estimators-precision`).

    Args:
        fn: `fn(params) -> scalar`, the objective (need not be differentiable).
        params: the point `x`, a non-empty pytree of real floating arrays.
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples: evaluations of `fn`; `n = num_samples / 2` (even) if antithetic.
        sigma: a scalar `> 0`: 1e-3 (MeZO's) for smooth objectives, else their scale.
        antithetic: central differences over `±p` (the baseline is then unused).
        directions: a name of `DIRECTION_KINDS` or a `DirectionKind`, a user's own included.
        baseline: `b_i` of forward differences: "unperturbed" (`f(x)`), a name or a
            `GroupBaseline` as in `policy_gradient`, or a scalar.
        chunk_size: evaluations per chunk, a divisor of `num_samples` (even if antithetic).
        return_samples: return the per-direction estimates `c_i w_i` (leading axis `n`).
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys, whose
            devices divide `n`: the directions are evaluated across the mesh.

    Returns:
        The gradient estimate, shaped like `params` (or the per-direction estimates).

    Raises:
        ValueError: naming the argument: bad `params`, `num_samples`, `sigma`, `chunk_size`,
            `directions`, `baseline` or `sample_sharding`, a non-scalar `fn`, or a non-key `key`.

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
    return estimate(fn, params, key, num_samples=num_samples, sigma=sigma,
                    antithetic=antithetic, directions=directions, baseline=baseline,
                    chunk_size=chunk_size, return_samples=return_samples,
                    sample_sharding=sample_sharding)


def estimate(
    fn: Callable[[PyTree], jax.Array], params: PyTree, key: KeyLike, *, num_samples: int,
    sigma: jax.typing.ArrayLike, antithetic: bool, directions: str | _directions.DirectionKind,
    baseline: _baselines.Baseline, chunk_size: int | None, return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None, sign: bool = False,
) -> PyTree:
    """`zeroth_order_grad`; with `sign`, `(1/n) sum_i sign(c_i) w_i` (ZO-Bench's ZO-SGD-Sign,
    for `zeroth_order_estimate(..., sign_coefficients=True)`)."""
    _plan.check_arguments(params, num_samples, sigma, antithetic, directions, baseline,
                          chunk_size)
    sample_keys = _sampling.sample_keys(key, num_samples // 2 if antithetic else num_samples)
    plan = _plan.create(fn, params, num_samples=num_samples, sigma=sigma,
                        difference="central" if antithetic else "forward",
                        directions=directions, baseline=baseline,
                        sample_sharding=sample_sharding, sign=sign)
    return _strategy.estimate(plan, sample_keys, chunk_size, return_samples)
