"""The estimators as Optax gradient transformations: the objective passed at update time."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxtricks._src import checks, keys
from jaxtricks._src.typing import KeyLike, PyTree
from jaxtricks.estimators import _baselines, _directions, _forward_gradient, _zeroth_order

Mask = PyTree | Callable[[PyTree], PyTree] | None
"""Where to perturb: a pytree of booleans shaped like the params (each leaf a bool
array broadcastable to its parameter, or a bool for the whole leaf), a callable of the
params returning one, or None (everywhere)."""


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
    sign_coefficients: bool = False,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replaces the updates with a zeroth-order estimate of the gradient of `value_fn`.

    .. math::

        g_t = \texttt{zeroth\_order\_grad}(\texttt{value\_fn}, x_t,
        \texttt{fold\_in}(\texttt{key}, t), \ldots)

    `update(updates, state, params, *, value_fn)` ignores the incoming `updates` and
    returns `g_t`, `t` the step count kept in the state; `value_fn(params) -> scalar` is an
    extra argument, as in `optax.scale_by_backtracking_linesearch`. Chained with optax it
    gives ZO-Bench's optimisers (:ref:`estimators-zo-optimisers`); MeZO's in-place step
    without any gradient buffer is `zeroth_order_update`.

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples, sigma, antithetic, directions, baseline, chunk_size: as in
            `zeroth_order_grad`.
        sign_coefficients: `(1/n) sum_i sign(c_i) w_i`, ZO-Bench's ZO-SGD-Sign (the signs
            of the directions' coefficients; elementwise signs: `optax.sign_sgd` after).
        mask: perturb, and estimate, only where True (SparseMeZO, arXiv:2402.15751): bools
            like `params` (or broadcastable), or a callable of the params; elsewhere 0.

    Returns:
        An `optax.GradientTransformationExtraArgs` whose state is an `EstimateState`.

    Raises:
        ValueError: for a `key` that is not a key; the other arguments as
            `zeroth_order_grad` does, and a bad `mask`, at the first update.

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
        return _zeroth_order.estimate(
            value_fn, params, step_key, num_samples=num_samples, sigma=sigma,
            antithetic=antithetic, directions=directions, baseline=baseline,
            chunk_size=chunk_size, sign=sign_coefficients)

    return _estimate_transform(key, estimate, mask)


def forward_gradient_estimate(
    key: KeyLike,
    *,
    num_samples: int,
    directions: str | _directions.DirectionKind = "gaussian",
    chunk_size: int | None = None,
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Replaces the updates with a forward-gradient estimate of `grad value_fn`.

    As `zeroth_order_estimate`, with `forward_gradient` (one `jax.jvp` per direction)
    in place of `zeroth_order_grad`: ZO-Bench's forward-gradient SGD is
    `optax.chain(forward_gradient_estimate(key, num_samples=1), optax.sgd(lr))`.

    Args:
        key: a `jax.random.key` (threefry, rbg or unsafe_rbg) or a legacy `PRNGKey`.
        num_samples, directions, chunk_size: as in `forward_gradient`.
        mask: as in `zeroth_order_estimate`: tangents only where True.

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

    return _estimate_transform(key, estimate, mask)


def _estimate_transform(
    key: KeyLike,
    estimate: Callable[[Callable[[PyTree], jax.Array], PyTree, jax.Array], PyTree],
    mask: Mask = None,
) -> optax.GradientTransformationExtraArgs:
    """The transform of `estimate(value_fn, params, step_key)`, step `t` keyed by
    `fold_in(key, t)`, perturbing only where `mask` is True."""
    key_data = stored_key(key)

    def init(params: PyTree) -> EstimateState:
        del params
        return EstimateState(count=jnp.zeros((), jnp.int32), key=key_data)

    def update(updates: optax.Updates, state: Any, params: optax.Params | None = None,
               *, value_fn: Callable[[PyTree], jax.Array] | None = None,
               **extra_args: Any) -> tuple[optax.Updates, EstimateState]:
        del updates, extra_args
        params, value_fn = require_objective(params, value_fn)
        step_key = key_at_step(state)
        if mask is None:
            estimate_ = estimate(value_fn, params, step_key)
        else:
            estimate_ = _masked_estimate(estimate, value_fn, params, step_key, mask)
        count = jnp.asarray(optax.safe_increment(state.count))
        return estimate_, EstimateState(count=count, key=state.key)

    return optax.GradientTransformationExtraArgs(init, update)


def stored_key(key: KeyLike) -> jax.Array:
    """The raw data of `key` as a threefry key, kept in a transform's state.

    Raises:
        ValueError: naming `key`, for anything that is not a single key.
    """
    return jax.random.key_data(keys.batch_invariant(keys.as_key(key, "key"), "key"))


def key_at_step(state: Any) -> jax.Array:
    """`fold_in(key, t)`: the typed key of step `t = state.count` of a transform's state."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.key), state.count)


def require_objective(
    params: optax.Params | None, value_fn: Callable[[PyTree], jax.Array] | None,
    name: str = "value_fn",
) -> tuple[optax.Params, Callable[[PyTree], jax.Array]]:
    """`(params, value_fn)`, both given to `update`.

    Raises:
        ValueError: naming both, when either is None.
    """
    if params is None or value_fn is None:
        raise ValueError(
            f"params and {name} must be passed to update ({name}(params) -> scalar, "
            f"the objective), got params={type(params).__name__} and {name}={value_fn!r}.")
    return params, value_fn


def _masked_estimate(
    estimate: Callable[[Callable[[PyTree], jax.Array], PyTree, jax.Array], PyTree],
    value_fn: Callable[[PyTree], jax.Array], params: PyTree, step_key: jax.Array, mask: Mask,
) -> PyTree:
    """The estimate of `value_fn` restricted to the entries where `mask` is True.

    `value_fn` is evaluated at `where(mask, y, x)`: the perturbed point `y` where True,
    `x` exactly elsewhere; the estimate is then `where(mask, g, 0)`.
    """
    mask_tree = mask(params) if callable(mask) else mask
    checks.check_same_structure("mask", mask_tree, "params", params)
    for (path, selected), leaf in zip(jax.tree_util.tree_leaves_with_path(mask_tree),
                                      jax.tree.leaves(params), strict=True):
        dtype, shape = jnp.result_type(selected), jnp.shape(selected)
        if dtype != jnp.bool_ or not _broadcasts_to(shape, leaf.shape):
            raise ValueError(
                "mask must hold booleans broadcastable to the params' shapes, got dtype "
                f"{dtype} and shape {shape} at {jax.tree_util.keystr(path)} for a "
                f"parameter of shape {leaf.shape}.")

    def restricted(point: PyTree) -> jax.Array:
        return value_fn(jax.tree.map(jnp.where, mask_tree, point, params))

    return jax.tree.map(lambda selected, g: jnp.where(selected, g, jnp.zeros((), g.dtype)),
                        mask_tree, estimate(restricted, params, step_key))


def _broadcasts_to(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    try:
        return jnp.broadcast_shapes(shape, target) == tuple(target)
    except ValueError:
        return False


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
        params, value_fn = require_objective(params, value_fn)
        values = jnp.stack([value_fn(optax.apply_updates(params, optax.tree.scale(s, updates)))
                            for s in (1.0, -1.0)] + [value_fn(params)])
        scale = jnp.array([1.0, -1.0, 0.0])[jnp.argmin(values)]
        return jax.tree.map(lambda u: scale.astype(u.dtype) * u, updates), state  # exact

    return optax.GradientTransformationExtraArgs(init, update)
