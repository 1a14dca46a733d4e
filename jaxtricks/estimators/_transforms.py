"""The estimators as Optax gradient transformations: the objective passed at update time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import keys
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _forward_gradient, _zeroth_order


class EstimateState(NamedTuple):
    """The state of `zeroth_order_estimate` and `forward_gradient_estimate`.

    Attributes:
        count: the number of updates so far (int32).
        key: the raw data of the transform's threefry key (uint32[2]; `optax.add_noise`
            keeps its `rng_key` too), so that the state saves like any array.

    References:
        Optax's `AddNoiseState`, https://optax.readthedocs.io (the key in the state).
    """

    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in optax
    key: jax.Array


def zeroth_order_estimate(
    key: KeyLike,
    *,
    num_samples: int,
    sigma: jax.typing.ArrayLike = 1e-3,
    antithetic: bool = True,
    directions: str | _directions.DirectionKind = "gaussian",
    baseline: _baselines.Baseline = "unperturbed",
    chunk_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replaces the updates with a zeroth-order estimate of the gradient of `value_fn`.

    .. math::

        g_t = \texttt{zeroth\_order\_grad}(\texttt{value\_fn}, x_t,
        \texttt{fold\_in}(\texttt{key}, t), \ldots)

    `update(updates, state, params, *, value_fn)` ignores the incoming `updates` and
    returns `g_t`, the estimate at `params` with the key `jax.random.fold_in(key, t)`,
    `t` the step count kept in the state. `value_fn(params) -> scalar` is an extra
    argument, as in `optax.scale_by_backtracking_linesearch`. Chained, the zeroth-order
    optimisers of ZO-Bench are optax's: ZO-SGD `chain(zeroth_order_estimate(...),
    optax.sgd(lr))`, with momentum `optax.sgd(lr, momentum)` (one params-sized buffer),
    ZO-Adam `optax.adam(lr)` (two), ZO-SignSGD (elementwise) `optax.sign_sgd(lr)`;
    gradient accumulation is `optax.MultiSteps` after it; schedules are optax
    schedules. For MeZO's in-place step without any gradient buffer, use
    `zeroth_order_update`.

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples, sigma, antithetic, directions, baseline, chunk_size: as in
            `zeroth_order_grad`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is an `EstimateState`.

    Raises:
        ValueError: for a `key` that is not a key; the other arguments as
            `zeroth_order_grad` does, at the first update.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxtricks import estimators
        >>> loss = lambda p: jnp.sum((p - 1.0) ** 2)
        >>> tx = optax.chain(estimators.zeroth_order_estimate(
        ...     jax.random.key(0), num_samples=16), optax.sgd(0.05))
        >>> @jax.jit
        ... def step(params, state):
        ...     updates, state = tx.update(params, state, params, value_fn=loss)
        ...     return optax.apply_updates(params, updates), state
        >>> params = jnp.zeros(3)
        >>> state = tx.init(params)
        >>> for _ in range(100):
        ...     params, state = step(params, state)
        >>> bool(loss(params) < 0.1)
        True

    References:
        Zhang et al. (ZO-Bench), https://arxiv.org/abs/2402.11592; Malladi et al. (MeZO),
        https://arxiv.org/abs/2305.17333.
    """
    def estimate(value_fn: Callable[[PyTree], jax.Array], params: PyTree,
                 step_key: jax.Array) -> PyTree:
        return _zeroth_order.zeroth_order_grad(
            value_fn, params, step_key, num_samples=num_samples, sigma=sigma,
            antithetic=antithetic, directions=directions, baseline=baseline,
            chunk_size=chunk_size)

    return _estimate_transform(key, estimate)


def forward_gradient_estimate(
    key: KeyLike,
    *,
    num_samples: int,
    directions: str | _directions.DirectionKind = "gaussian",
    chunk_size: int | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replaces the updates with a forward-gradient estimate of `grad value_fn`.

    As `zeroth_order_estimate`, with `forward_gradient` (one `jax.jvp` per direction)
    in place of `zeroth_order_grad`: ZO-Bench's forward-gradient SGD is
    `optax.chain(forward_gradient_estimate(key, num_samples=1), optax.sgd(lr))`.

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples, directions, chunk_size: as in `forward_gradient`.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is an `EstimateState`.

    Raises:
        ValueError: for a `key` that is not a key.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jaxtricks import estimators
        >>> tx = estimators.forward_gradient_estimate(jax.random.key(0), num_samples=4)
        >>> loss = lambda p: jnp.sum(p ** 2)
        >>> g, state = tx.update(None, tx.init(jnp.ones(2)), jnp.ones(2), value_fn=loss)
        >>> g.shape, int(state.count)
        ((2,), 1)

    References:
        Baydin et al., "Gradients without backpropagation",
        https://arxiv.org/abs/2202.08587; Zhang et al. (ZO-Bench),
        https://arxiv.org/abs/2402.11592.
    """
    def estimate(value_fn: Callable[[PyTree], jax.Array], params: PyTree,
                 step_key: jax.Array) -> PyTree:
        return _forward_gradient.forward_gradient(
            value_fn, params, step_key, num_samples=num_samples, directions=directions,
            chunk_size=chunk_size)

    return _estimate_transform(key, estimate)


def _estimate_transform(
    key: KeyLike,
    estimate: Callable[[Callable[[PyTree], jax.Array], PyTree, jax.Array], PyTree],
) -> optax.GradientTransformationExtraArgs:
    """The transform of `estimate(value_fn, params, step_key)`, step `t` keyed by
    `fold_in(key, t)`."""
    key_data = jax.random.key_data(keys.batch_invariant(keys.as_key(key, "key"), "key"))

    def init(params: PyTree) -> EstimateState:
        del params
        return EstimateState(count=jnp.zeros((), jnp.int32), key=key_data)

    def update(updates: optax.Updates, state: Any, params: optax.Params | None = None,
               *, value_fn: Callable[[PyTree], jax.Array] | None = None,
               **extra_args: Any) -> tuple[optax.Updates, EstimateState]:
        del updates, extra_args
        if params is None or value_fn is None:
            raise ValueError(
                "params and value_fn must be passed to update (value_fn(params) -> scalar, "
                f"the objective), got params={type(params).__name__} and "
                f"value_fn={value_fn!r}."
            )
        step_key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)
        estimate_ = estimate(value_fn, params, step_key)
        count = jnp.asarray(optax.safe_increment(state.count))
        return estimate_, EstimateState(count=count, key=state.key)

    return optax.GradientTransformationExtraArgs(init, update)


def keep_best_step() -> optax.GradientTransformationExtraArgs:
    r"""ZO-Bench's conservative step: of `x + u`, `x - u` and `x`, keep the lowest value.

    .. math::

        u' = s^* u, \qquad s^* = \arg\min_{s \in (1, -1, 0)} f(x + s u)

    (ties: the order shown), with `f = value_fn` passed to `update` as an extra argument.
    Chained after an optimiser, `optax.chain(zeroth_order_estimate(...), optax.sgd(lr),
    keep_best_step())` is ZO-SGD-Cons: the step and its reverse each cost one evaluation
    (and one params-sized temporary), `f(x)` a third; nothing is stored between steps.

    Returns:
        An `optax.GradientTransformationExtraArgs` with `optax.EmptyState`.

    Raises:
        ValueError: at `update`, without `params` or `value_fn`.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jaxtricks import estimators
        >>> tx = estimators.keep_best_step()
        >>> loss = lambda p: jnp.sum(p ** 2)
        >>> step, _ = tx.update(jnp.array([0.5]), tx.init(None), jnp.array([1.0]),
        ...                     value_fn=loss)  # x + u = 1.5 is worse: the reverse
        >>> step
        Array([-0.5], dtype=float32)

    References:
        Zhang et al. (ZO-Bench), https://arxiv.org/abs/2402.11592, ZO-SGD-Cons
        (Kim et al., "Curvature-aware derivative-free optimization", arXiv:2109.13391).
    """
    def init(params: optax.Params) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: optax.Updates, state: Any, params: optax.Params | None = None,
               *, value_fn: Callable[[PyTree], jax.Array] | None = None,
               **extra_args: Any) -> tuple[optax.Updates, optax.EmptyState]:
        del extra_args
        if params is None or value_fn is None:
            raise ValueError(
                "params and value_fn must be passed to update (value_fn(params) -> scalar, "
                f"the objective), got params={type(params).__name__} and "
                f"value_fn={value_fn!r}.")
        values = jnp.stack([value_fn(optax.apply_updates(params, optax.tree.scale(s, updates)))
                            for s in (1.0, -1.0)] + [value_fn(params)])
        scale = jnp.array([1.0, -1.0, 0.0])[jnp.argmin(values)]
        return optax.tree.scale(scale, updates), state

    return optax.GradientTransformationExtraArgs(init, update)
