"""MeZO-SVRG: the zeroth-order estimate with variance reduced against an anchor point."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _transforms, _zeroth_order


class SVRGState(NamedTuple):
    """The state of `svrg_estimate`.

    Attributes:
        count: the number of updates so far (int32).
        key: the raw data of the transform's threefry key (uint32[2]).
        anchor: the params at the last full-batch step (`x~`).
        anchor_estimate: the full-batch estimate at the anchor (`g~`).

    References:
        Gautam et al. (MeZO-SVRG), https://arxiv.org/abs/2404.08080.
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
    key: jax.Array
    anchor: PyTree
    anchor_estimate: PyTree


def svrg_estimate(
    key: KeyLike,
    *,
    num_samples: int,
    update_interval: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str | _directions.DirectionKind = "gaussian",
    baseline: _baselines.Baseline = "unperturbed",
    chunk_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""MeZO-SVRG: minibatch estimates corrected by an anchor's full-batch estimate.

    .. math::

        g_t = \begin{cases} \hat g_F(x_t), \quad \tilde x \leftarrow x_t, \quad
        \tilde g \leftarrow \hat g_F(x_t) & t \bmod q = 0 \\
        \hat g_B(x_t) - \hat g_B(\tilde x) + \tilde g & \text{otherwise} \end{cases}

    `hat g_F`, `hat g_B`: `zeroth_order_grad` (key `fold_in(key, t)`) of the extra
    arguments `full_value_fn` and `value_fn` (the minibatch's), the latter at `x_t` and at
    the anchor with the same directions. The state holds the anchor and its estimate, two
    params-sized buffers. With `optax.sgd(lr)` after it, the paper's two rates are a
    schedule, `lambda t: jnp.where(t % q == 0, lr_full, lr)`.

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples, sigma, antithetic, directions, baseline, chunk_size: as in
            `zeroth_order_grad`, for every estimate.
        update_interval: `q >= 1`, the steps between full-batch estimates.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is an `SVRGState`.

    Raises:
        ValueError: naming the argument: `key`, `update_interval`; at `update`, without
            `params`, `value_fn` or `full_value_fn`; the others as `zeroth_order_grad`.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxtricks import estimators
        >>> a = jax.random.normal(jax.random.key(1), (64, 4))
        >>> loss = lambda x, rows: jnp.mean((a[rows] @ x - a[rows].sum(1)) ** 2)
        >>> tx = optax.chain(estimators.svrg_estimate(
        ...     jax.random.key(0), num_samples=2, update_interval=4), optax.sgd(0.05))
        >>> @jax.jit
        ... def step(x, state, rows):  # rows: the minibatch
        ...     g, state = tx.update(x, state, x, value_fn=lambda p: loss(p, rows),
        ...                          full_value_fn=lambda p: loss(p, jnp.arange(64)))
        ...     return optax.apply_updates(x, g), state
        >>> x, state = jnp.zeros(4), tx.init(jnp.zeros(4))
        >>> for t in range(100):
        ...     x, state = step(x, state, jnp.arange(8) + 8 * (t % 8))
        >>> bool(loss(x, jnp.arange(64)) < 0.1 * loss(jnp.zeros(4), jnp.arange(64)))
        True

    References:
        Gautam et al., "Variance-reduced zeroth-order methods for fine-tuning language
        models" (MeZO-SVRG), https://arxiv.org/abs/2404.08080; Liu et al.
        (ZO-SVRG), https://arxiv.org/abs/1805.10367.
    """
    checks.check_positive_int("update_interval", update_interval)
    key_data = _transforms.stored_key(key)

    def estimate(fn: Callable[[PyTree], jax.Array], params: PyTree,
                 step_key: jax.Array) -> PyTree:
        return _zeroth_order.zeroth_order_grad(
            fn, params, step_key, num_samples=num_samples, sigma=sigma,
            antithetic=antithetic, directions=directions, baseline=baseline,
            chunk_size=chunk_size)

    def init(params: PyTree) -> SVRGState:
        return SVRGState(count=jnp.zeros((), jnp.int32), key=key_data,
                         anchor=jax.tree.map(jnp.array, params),
                         anchor_estimate=jax.tree.map(jnp.zeros_like, params))

    def update(updates: optax.Updates, state: Any, params: optax.Params | None = None,
               *, value_fn: Callable[[PyTree], jax.Array] | None = None,
               full_value_fn: Callable[[PyTree], jax.Array] | None = None,
               **extra_args: Any) -> tuple[optax.Updates, SVRGState]:
        del updates, extra_args
        params, value_fn = _transforms.require_objective(params, value_fn)
        params, full_value_fn = _transforms.require_objective(
            params, full_value_fn, "full_value_fn")
        step_key = _transforms.key_at_step(state)

        def full_batch() -> tuple[PyTree, PyTree, PyTree]:
            full = estimate(full_value_fn, params, step_key)
            return full, params, full

        def minibatch() -> tuple[PyTree, PyTree, PyTree]:
            corrected = jax.tree.map(
                lambda now, then, anchor: now - then + anchor,
                estimate(value_fn, params, step_key),
                estimate(value_fn, state.anchor, step_key), state.anchor_estimate)
            return corrected, state.anchor, state.anchor_estimate

        output, anchor, anchor_estimate = jax.lax.cond(
            state.count % update_interval == 0, full_batch, minibatch)
        count = jnp.asarray(optax.safe_increment(state.count))
        return output, SVRGState(count=count, key=state.key, anchor=anchor,
                                 anchor_estimate=anchor_estimate)

    return optax.GradientTransformationExtraArgs(init, update)
