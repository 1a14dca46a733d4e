"""The forward gradient: exact directional derivatives by `jax.jvp`, no `sigma`."""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxtricks._src import checks
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _directions, _plan, _sampling, _strategy


def forward_gradient(
    fn: Callable[[PyTree], jax.Array],
    params: PyTree,
    key: KeyLike,
    *,
    num_samples: int,
    directions: str | _directions.DirectionKind = "gaussian",
    chunk_size: int | None = None,
    return_samples: bool = False,
    sample_sharding: jax.sharding.Sharding | None = None,
) -> PyTree:
    r"""Estimates `grad fn(params)` from `num_samples` forward-mode derivatives.

    .. math::

        \hat g = \frac{1}{n} \sum_{i=1}^n (\nabla f(x) \cdot p_i)\, w_i, \qquad
        \operatorname{Cov}(\hat g) = \frac{\lVert g \rVert^2 I + g g^\top}{n}
        \ \text{(Gaussian directions)},

    with the perturbations `p_i` and weights `w_i` of `directions` (`p = w = u ~ N(0, I)`
    for "gaussian"), each `grad f . p_i` one `jax.jvp`: the `sigma -> 0` limit of
    `zeroth_order_grad`, unbiased for the gradient itself (`E[p w^T] = I`), with no step
    size, no rounding floor and no smoothing bias. `fn` must be forward-differentiable; a
    jvp costs about two evaluations. Memory, not always below `jax.grad`'s:
    :ref:`estimators-strategies`.

    Args:
        fn: `fn(params) -> scalar`, differentiable in forward mode.
        params: the point `x`, a non-empty pytree of real floating arrays.
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`;
            direction `i` is drawn from `jax.random.split(key, n)[i]`, the directions
            of `zeroth_order_grad(..., antithetic=False)` for the same key.
        num_samples: the number of directions `n` (one jvp each).
        directions: a name of `DIRECTION_KINDS` or a `DirectionKind`.
        chunk_size: directions per chunk, a divisor of `num_samples`, or None.
        return_samples: return the per-direction estimates `(grad f . p_i) w_i`, each
            leaf with a leading `[num_samples]` axis.
        sample_sharding: a `jax.sharding.Sharding` of the 1-D array of sample keys.

    Returns:
        The estimate, shaped like `params` (or the per-direction estimates).

    Raises:
        ValueError: for bad `params`, `num_samples`, `directions`, `chunk_size`, a
            non-scalar `fn`, or a `key` that is not a key.

    Examples:
        >>> import jax, jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> loss = lambda p: jnp.sum(p ** 2)
        >>> x = jnp.array([1.0, -2.0])
        >>> g = estimators.forward_gradient(loss, x, jax.random.key(0), num_samples=4096)
        >>> bool(jnp.allclose(g, 2 * x, atol=0.25))
        True

    References:
        Baydin, Pearlmutter, Syme, Wood and Torr, "Gradients without backpropagation",
        https://arxiv.org/abs/2202.08587 (2022), eq. 3.
    """
    _sampling.check_params(params)
    checks.check_positive_int("num_samples", num_samples)
    kind = _directions.resolve(directions)
    if chunk_size is not None:
        _plan.check_chunk_size(chunk_size, num_samples, False, kind)
    sample_keys = _sampling.sample_keys(key, num_samples)
    plan = _plan.create(fn, params, num_samples=num_samples, sigma=None,
                        difference="tangent", directions=kind,
                        sample_sharding=sample_sharding)
    return _strategy.estimate(plan, sample_keys, chunk_size, return_samples)
